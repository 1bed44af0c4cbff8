"""Reading and writing real Llama-2 checkpoints: Hugging Face and Meta formats.

Hugging Face directory: `config.json` + `model.safetensors`, or shards `model-0000k-of-0000n.safetensors`
listed in `model.safetensors.index.json`. Names differ from ours (model.layers.0.self_attn.q_proj ->
layers.0.attention.wq) and HF stores wq/wk with the rows of each head permuted: Meta rotates
interleaved pairs (x0, x1), (x2, x3), ...; HF's `rotate_half` rotates (x_i, x_{i + hd/2}). We undo the
permutation on load and redo it on save, so `transformers` loads what we write unchanged.

Meta directory: `params.json` + `consolidated.00.pth`, `consolidated.01.pth`, ... (one per model-parallel
rank). Our names are Meta's; the shards are merged along the dimension each layer was split on.

Loading never holds two copies of the weights: the model is built on the meta device, tensors are
read one at a time from memory-mapped files, converted, and assigned in place. Under torchrun,
load_hf_shards lets each rank read only the rows of its own FSDP2 shards.

    model = load_model("llama-2-7b-hf", dtype=torch.bfloat16)
    save_model(model, "out/m1", tokenizer_path="tokenizer.model")    # = save_hf(model.state_dict(), model.args, ...)

Every problem with the files is a CheckpointError naming the file and key.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch

from srlm.io import replace_dir
from srlm.model import Llama, ModelArgs


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and key."""


# ---- names: HF <-> ours (= Meta's) ----
_HF_LAYER = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
_HF_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
_HF_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # a buffer old exports kept


def hf_to_ours(name: str) -> Optional[str]:
    if name in _HF_TOP:
        return _HF_TOP[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    if m and m.group(2) in _HF_LAYER:
        return f"layers.{m.group(1)}.{_HF_LAYER[m.group(2)]}.weight"
    return None


def ours_to_hf(name: str) -> str:
    for hf, ours in _HF_TOP.items():
        if name == ours:
            return hf
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name)
    for hf, ours in _HF_LAYER.items():
        if m and m.group(2) == ours:
            return f"model.layers.{m.group(1)}.{hf}.weight"
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


def permute_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Within each head, move rows from interleaved pairs (0,1),(2,3).. to halves (0, hd/2),(1, hd/2+1)..."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def permute_hf_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of permute_meta_to_hf."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


# ---- configs ----
def _check_types(config: dict, source: Path, ints=(), floats=(), any_int=()) -> None:
    """Keys given with a wrong type are named here, not deep inside ModelArgs' arithmetic."""
    for key in (*ints, *any_int, *floats):
        value = config.get(key)
        if value is None:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if key in any_int and not is_int:
            raise CheckpointError(f"{source}: key {key!r} must be an integer, got {value!r}")
        if key in ints and not (is_int and value > 0):
            raise CheckpointError(f"{source}: key {key!r} must be a positive integer, got {value!r}")
        if key in floats and not ((is_int or isinstance(value, float)) and math.isfinite(value) and value > 0):
            raise CheckpointError(f"{source}: key {key!r} must be a positive number, got {value!r}")


# config.json keys that change the maths, and the one value srlm implements for each when the
# key is present; anything else is refused by name rather than silently computed differently.
_HF_MUST_BE = {"model_type": ("llama",), "hidden_act": ("silu",), "attention_bias": (False,), "mlp_bias": (False,)}


def _rope_theta(config: dict, source: Path) -> float:
    """The RoPE base, from either layout, refusing any scaling srlm does not implement.

    transformers <= 4.x: top-level `rope_theta` and `rope_scaling` ({"rope_type"/"type": ...} or null).
    transformers 5.x:    `rope_parameters: {"rope_theta": ..., "rope_type": "default"}`.
    Only plain RoPE ("default", or no scaling at all) is implemented; "llama3", "linear", "dynamic",
    "yarn"... change the frequencies and are refused. Absent everywhere, the base is 10000, the
    default both transformers versions apply to a Llama config.
    """
    thetas = {}
    if config.get("rope_theta") is not None:
        thetas["rope_theta"] = config["rope_theta"]
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise CheckpointError(f"{source}: {key} must be an object or null, got {params!r}")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise CheckpointError(f"{source}: {key}.rope_type={kind!r} is not supported (srlm implements plain "
                                  f"RoPE, rope_type 'default')")
        if params.get("rope_theta") is not None:
            thetas[f"{key}.rope_theta"] = params["rope_theta"]
    if len(set(thetas.values())) > 1:
        raise CheckpointError(f"{source}: the RoPE base is given twice with different values: {thetas}")
    theta = next(iter(thetas.values()), 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise CheckpointError(f"{source}: rope_theta={theta!r} is not a positive number")
    return float(theta)


def args_from_hf_config(config: dict, source: Path) -> ModelArgs:
    """ModelArgs from a Hugging Face Llama config.json, in the transformers 4.x or 5.x layout.

    Every key that changes what the network computes is read or refused by name: hidden_size,
    num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size,
    vocab_size, rms_norm_eps, rope_theta / rope_parameters / rope_scaling, tie_word_embeddings,
    hidden_act, attention_bias, mlp_bias, quantization_config.
    """
    def need(key):
        if key not in config:
            raise CheckpointError(f"{source}: missing key {key!r}")
        return config[key]

    _check_types(config, source, ints=("hidden_size", "num_hidden_layers", "num_attention_heads",
                                       "num_key_value_heads", "vocab_size", "intermediate_size",
                                       "max_position_embeddings", "head_dim"), floats=("rms_norm_eps", "rope_theta"))

    for key, allowed in _HF_MUST_BE.items():
        if key in config and config[key] not in allowed:
            raise CheckpointError(f"{source}: {key}={config[key]!r} is not supported (srlm implements "
                                  f"{key}={allowed[0]!r})")
    if config.get("quantization_config"):
        raise CheckpointError(f"{source}: quantization_config={config['quantization_config']!r}: quantized "
                              f"checkpoints are not supported; save a dequantised float copy first")
    tie = config.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise CheckpointError(f"{source}: tie_word_embeddings={tie!r} is not true or false")
    n_heads = need("num_attention_heads")
    try:
        return ModelArgs(
            dim=need("hidden_size"), n_layers=need("num_hidden_layers"), n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            vocab_size=need("vocab_size"), hidden_dim=need("intermediate_size"),
            norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(config, source),
            max_seq_len=config.get("max_position_embeddings", 4096),
            head_dim=config.get("head_dim"), tie_embeddings=tie)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: inconsistent config: {e}") from None


def hf_config_from_args(args: ModelArgs, dtype: torch.dtype, special_ids: Optional[dict] = None) -> dict:
    """config.json in the legacy layout (top-level rope_theta), which transformers 4.4x and 5.x both read."""
    ids = {"bos_token_id": 1, "eos_token_id": 2, **(special_ids or {})}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim, "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "rope_scaling": None,
        "max_position_embeddings": args.max_seq_len, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": args.tie_embeddings, **ids,
        "initializer_range": 0.02, "pretraining_tp": 1,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


# ---- reading tensors ----
def _open_safetensors(file: Path):
    from safetensors import safe_open

    if not file.is_file():
        raise CheckpointError(f"{file}: file not found")
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError for a bad header or a truncated file
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def _hf_weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards that model.safetensors.index.json lists."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: malformed index ({e})") from None
        for fname in files:
            # Shards live inside the checkpoint folder: a name that leaves it ("../x", "/x") is
            # refused. Checked on the name, not the resolved path: the Hugging Face cache keeps
            # shards as symlinks to blobs elsewhere, and those are fine.
            if not isinstance(fname, str) or os.path.isabs(fname) or \
                    os.path.normpath(fname).split(os.sep)[0] in ("..", ""):
                raise CheckpointError(f"{index}: weight_map names the file {fname!r}, which is not inside "
                                      f"the checkpoint folder {path}")
        return [path / fname for fname in files]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json found")


def _iter_hf_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor, Path]]:
    for file in _hf_weight_files(path):
        f = _open_safetensors(file)
        for name in f.keys():
            try:
                tensor = f.get_tensor(name)
            except Exception as e:
                raise CheckpointError(f"{file}: cannot read tensor {name!r} (truncated or corrupt?): {e}") from None
            yield name, tensor, file


def _read_hf(path: Path, args: ModelArgs) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (our name, tensor in Meta layout, file) for every weight of an HF directory."""
    for name, tensor, file in _iter_hf_tensors(path):
        if _HF_IGNORED.fullmatch(name):
            continue
        ours = hf_to_ours(name)
        if ours is None:
            raise CheckpointError(f"{file}: unexpected key {name!r} (not a Llama weight)")
        if ours.endswith("attention.wq.weight") and tensor.dim() == 2:
            tensor = _checked_permute(tensor, args.n_heads, name, file)
        elif ours.endswith("attention.wk.weight") and tensor.dim() == 2:
            tensor = _checked_permute(tensor, args.n_kv_heads, name, file)
        yield ours, tensor, file


def _checked_permute(w, n_heads, name, file):
    if w.shape[0] % (2 * n_heads):
        raise CheckpointError(f"{file}: {name} has shape {tuple(w.shape)}, which does not split into "
                              f"{n_heads} heads as config.json says")
    return permute_hf_to_meta(w, n_heads)


# How Meta's model-parallel code split each weight: rows (0), columns (1) or not at all (None).
def _meta_split_dim(name: str) -> Optional[int]:
    if name.startswith("tok_embeddings"):
        return 1
    if name.endswith(("wo.weight", "w2.weight")):
        return 1
    if name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")) or name == "output.weight":
        return 0
    return None  # norms are replicated


def _read_meta(path: Path) -> Iterator[tuple[str, torch.Tensor, Path]]:
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise CheckpointError(f"{path}: params.json found but no consolidated.*.pth shards")
    shards = []
    for file in files:
        try:
            shards.append(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read this shard (truncated, corrupt or not a "
                                  f"weights-only checkpoint?): {e}") from None
    names = list(shards[0].keys())
    for file, shard in zip(files[1:], shards[1:]):
        if set(shard.keys()) != set(names):
            diff = sorted(set(shard.keys()) ^ set(names))[:5]
            raise CheckpointError(f"{file}: keys differ from {files[0].name}'s, e.g. {diff}")
    for name in names:
        if name == "rope.freqs":  # the rotary table, recomputed by the model
            continue
        dim = _meta_split_dim(name)
        parts = [shard[name] for shard in shards]
        if dim is None or len(parts) == 1:
            tensor = parts[0]
        else:
            try:
                tensor = torch.cat(parts, dim=dim)
            except RuntimeError as e:
                raise CheckpointError(f"{path}: shards of {name!r} do not concatenate along dim {dim}: {e}") from None
        yield name, tensor, files[0] if len(files) == 1 else path


def args_from_meta_params(params: dict, source: Path, vocab_size: int) -> ModelArgs:
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
             "norm_eps", "rope_theta", "max_seq_len"}
    _check_types(params, source, ints=("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len"),
                 any_int=("vocab_size",), floats=("ffn_dim_multiplier", "norm_eps", "rope_theta"))
    kwargs = {k: v for k, v in params.items() if k in known and v is not None}
    for key in ("dim", "n_layers", "n_heads"):
        if key not in kwargs:
            raise CheckpointError(f"{source}: missing key {key!r}")
    if kwargs.get("vocab_size", -1) <= 0:  # Meta writes -1 and takes the size from the tokenizer
        kwargs["vocab_size"] = vocab_size
    try:
        return ModelArgs(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: inconsistent params: {e}") from None


# ---- loading ----
def _read_json(file: Path) -> dict:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: malformed JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: expected a JSON object of settings, got a {type(config).__name__}")
    return config


def _read_hf_config(path: Path) -> ModelArgs:
    """ModelArgs from an HF directory's config.json."""
    return args_from_hf_config(_read_json(path / "config.json"), path / "config.json")


def load_hf_args(path, **arg_overrides) -> ModelArgs:
    """The ModelArgs of an HF directory, with the same overrides load_model takes."""
    args = _read_hf_config(Path(path))
    for k, v in arg_overrides.items():
        setattr(args, k, v)
    args.__post_init__()
    return args


def load_model(path, dtype: torch.dtype = torch.float32, device="cpu", **arg_overrides) -> Llama:
    """Load an HF or Meta Llama directory into a Llama, one tensor at a time."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if (path / "config.json").is_file():
        config_file = path / "config.json"
        args = _read_hf_config(path)
        tensors = _read_hf(path, args)
    elif (path / "params.json").is_file():
        config_file = path / "params.json"
        params = _read_json(config_file)
        tensors = _read_meta(path)
        first = next(tensors, None)
        if first is None:
            raise CheckpointError(f"{path}: the checkpoint holds no tensors")
        vocab = first[1].shape[0] if first[0] == "tok_embeddings.weight" else params.get("vocab_size", -1)
        args = args_from_meta_params(params, config_file, vocab)
        tensors = _chain([first], tensors)
    else:
        raise CheckpointError(f"{path}: neither config.json (Hugging Face) nor params.json (Meta) found")
    for k, v in arg_overrides.items():
        setattr(args, k, v)
    args.__post_init__()

    with torch.device("meta"):
        model = Llama(args)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state, tied_head = {}, None
    for name, tensor, file in tensors:
        if args.tie_embeddings and name == "output.weight":
            tied_head = (tensor, file)  # checked against the embeddings once both are read
            continue
        if name not in expected:
            raise CheckpointError(f"{file}: unexpected key {name!r}")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(f"{file}: {name} has shape {tuple(tensor.shape)} but {config_file.name} implies "
                                  f"{tuple(expected[name])}; the config contradicts the weights")
        state[name] = tensor.to(device=device, dtype=dtype)
        _check_finite(state[name], name, file)
    if tied_head is not None:
        _check_tied_head(*tied_head, state)
    if args.tie_embeddings and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]  # the same tensor, re-tied below
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} weight(s), e.g. {missing[:5]}")
    model.load_state_dict(state, assign=True)
    if args.tie_embeddings:
        model.tie_weights()  # assign=True put in two Parameter objects; keep one
    tokenizer = next((path / f for f in ("tokenizer.model", "tokenizer.json") if (path / f).is_file()), None)
    model.tokenizer_path = str(tokenizer) if tokenizer is not None else None
    return model


def _check_finite(tensor: torch.Tensor, name: str, file) -> None:
    """NaN or inf in the weights (flipped bytes, a diverged run) would only show as garbage text."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{file}: tensor {name!r} holds non-finite values (NaN or inf); "
                              f"the file is corrupt or the run that wrote it diverged")


def _check_tied_head(head: torch.Tensor, file, state: dict) -> None:
    """A tied checkpoint that still stores lm_head (some exports do) must store the embeddings there."""
    emb = state.get("tok_embeddings.weight")
    if emb is not None and (head.shape != emb.shape or not torch.equal(head.to(emb.dtype), emb)):
        raise CheckpointError(f"{file}: lm_head.weight differs from model.embed_tokens.weight, but config.json "
                              f"says tie_word_embeddings=true")


def _chain(*iterables):
    for it in iterables:
        yield from it


def load_hf_shards(model: Llama, path) -> None:
    """Fill `model`'s (FSDP2-sharded) parameters in place with this rank's rows of an HF checkpoint.

    Under FSDP2 each parameter is a DTensor cut along dim 0 the way torch.chunk cuts it: with n rows
    and `world` ranks, `per_rank = ceil(n / world)` and rank r owns the rows
    [min(r * per_rank, n), min((r + 1) * per_rank, n)), so the last ranks may own fewer, or none.
    Each rank reads just those rows from the memory-mapped files (safetensors get_slice), so no
    process ever holds the whole model. A plain tensor (no FSDP) is the case world = 1.

    wq and wk: HF permutes the rows within each head (permute_hf_to_meta), so our rows [a, b) come
    from the whole heads that cover them. With head size hd we read heads h0 = a // hd up to
    h1 = ceil(b / hd), i.e. HF rows [h0 * hd, h1 * hd), permute those h1 - h0 heads, and keep rows
    [a - h0 * hd, b - h0 * hd). Names, dtype conversion and errors are those of load_model.
    """
    from torch.distributed.tensor import DTensor, Shard

    path = Path(path)
    args = _read_hf_config(path)
    params = dict(model.named_parameters())  # a tied output.weight is tok_embeddings.weight, listed once
    # Check every key and shape (headers only) before reading a row, so all ranks fail alike.
    found = {}  # our name -> (open file, its path, HF name)
    for file in _hf_weight_files(path):
        f = _open_safetensors(file)
        for name in f.keys():
            if _HF_IGNORED.fullmatch(name):
                continue
            ours = hf_to_ours(name)
            if ours is None:
                raise CheckpointError(f"{file}: unexpected key {name!r} (not a Llama weight)")
            if args.tie_embeddings and ours == "output.weight":
                continue  # the embeddings fill the one tied parameter
            if ours not in params:
                raise CheckpointError(f"{file}: unexpected key {ours!r}")
            shape = tuple(f.get_slice(name).get_shape())
            if shape != tuple(params[ours].shape):
                raise CheckpointError(f"{file}: {ours} has shape {shape} but config.json implies "
                                      f"{tuple(params[ours].shape)}; the config contradicts the weights")
            found[ours] = (f, file, name)
    missing = [k for k in params if k not in found]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} weight(s), e.g. {missing[:5]}")

    with torch.no_grad():
        for ours, p in params.items():
            f, file, name = found[ours]
            if isinstance(p, DTensor):
                if p.placements != (Shard(0),):
                    raise ValueError(f"{ours}: expected FSDP's Shard(0) placement, got {p.placements}")
                local, rank, world = p.to_local(), p.device_mesh.get_local_rank(), p.device_mesh.size()
            else:
                local, rank, world = p.data, 0, 1
            n, per_rank = p.shape[0], -(-p.shape[0] // world)
            a, b = min(rank * per_rank, n), min((rank + 1) * per_rank, n)  # this rank's global rows [a, b)
            if local.shape[0] != b - a:
                raise ValueError(f"{ours}: {local.shape[0]} local rows, not torch.chunk's {b - a} rows [{a}, {b})")
            if a == b:
                continue  # an empty shard on one of the last ranks
            heads = (args.n_heads if ours.endswith("attention.wq.weight") else
                     args.n_kv_heads if ours.endswith("attention.wk.weight") else None)
            try:
                if heads is None:
                    rows = f.get_slice(name)[a:b]
                else:  # whole heads h0 .. h1-1, permuted, then cut to [a, b)
                    hd = n // heads
                    h0, h1 = a // hd, -(-b // hd)
                    rows = permute_hf_to_meta(f.get_slice(name)[h0 * hd: h1 * hd], h1 - h0)
                    rows = rows[a - h0 * hd: b - h0 * hd]
            except Exception as e:
                raise CheckpointError(f"{file}: cannot read tensor {name!r} (truncated or corrupt?): {e}") from None
            _check_finite(rows, name, file)
            local.copy_(rows)  # converts to the parameter's dtype and device


# ---- saving ----
# Files that describe a checkpoint's tokenizer and chat format; a save keeps the ones it was given.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def _tokenizer_files(tokenizer_path) -> tuple[dict[str, Path], dict]:
    """{name in the saved folder: source file}, and the special-token ids for config.json.

    A file called tokenizer.model or tokenizer.json belongs to a checkpoint: it is copied with the
    tokenizer files beside it (tokenizer_config.json, chat template...). Any other file (e.g.
    ../shared/data/llama2_tokenizer.model) is a bare SentencePiece model, saved as tokenizer.model.
    """
    if tokenizer_path is None or not Path(tokenizer_path).is_file():
        return {}, {}
    from srlm.tokenizer import load_tokenizer

    src = Path(tokenizer_path)
    files = {"tokenizer.model": src}
    if src.name in ("tokenizer.model", "tokenizer.json"):
        files = {name: src.parent / name for name in TOKENIZER_FILES if (src.parent / name).is_file()}
    return files, load_tokenizer(src).special_ids()


def save_model(model: Llama, path, tokenizer_path=None, dtype: Optional[torch.dtype] = None,
               max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `model` as a Hugging Face directory that `transformers.LlamaForCausalLM.from_pretrained`
    loads, with its tokenizer.model (`tokenizer_path`, else the one it was loaded with)."""
    save_hf(model.state_dict(), model.args, path, tokenizer_path=tokenizer_path or model.tokenizer_path,
            dtype=dtype, max_shard_bytes=max_shard_bytes)


def save_hf(state_dict: dict, args: ModelArgs, path, tokenizer_path=None, dtype: Optional[torch.dtype] = None,
            max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `state_dict` (our names) as a Hugging Face Llama directory, atomically.

    Files go to a temporary sibling folder first, which then replaces `path`; an interrupted save
    leaves the previous checkpoint in place. With tied embeddings the one matrix is written once,
    as model.embed_tokens.weight, and config.json says tie_word_embeddings=true, as transformers
    writes it. The tokenizer files beside `tokenizer_path` (see _tokenizer_files) are copied and
    config.json names their special-token ids.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tok_files, special_ids = _tokenizer_files(tokenizer_path)
    tensors = {}
    for name, t in state_dict.items():
        if args.tie_embeddings and name == "output.weight":
            continue  # the same matrix as tok_embeddings.weight
        t = t.detach().to("cpu")
        if dtype is not None:
            t = t.to(dtype)
        if name.endswith("attention.wq.weight"):
            t = permute_meta_to_hf(t, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = permute_meta_to_hf(t, args.n_kv_heads)
        tensors[ours_to_hf(name)] = t.contiguous()
    out_dtype = next(iter(tensors.values())).dtype

    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)

    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards, start=1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                for name, t in shard.items():
                    weight_map[name] = fname
                    total += t.numel() * t.element_size()
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(hf_config_from_args(args, out_dtype, special_ids), indent=2))
        for name, src in tok_files.items():
            shutil.copyfile(src, tmp / name)
        if "generation_config.json" not in tok_files:
            ids = {k: v for k, v in {"bos_token_id": 1, "eos_token_id": 2, **special_ids}.items() if k != "pad_token_id"}
            (tmp / "generation_config.json").write_text(json.dumps(ids, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written .NAME.tmp-PID folder behind
        raise
    replace_dir(tmp, path)
