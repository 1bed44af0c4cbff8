"""srlm: a minimal, readable reference implementation of Self-Rewarding Language Models.

Yuan et al. (2024). One model follows instructions and judges answers; each iteration it
writes prompts, samples answers, scores them itself and trains on the pairs with DPO.
"""
