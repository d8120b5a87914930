"""Built-in training recipes (plain torch.distributed programs; no Django imports).

- :mod:`workers.recipes.causal_lm`: a Llama-style causal language model from text.
"""
