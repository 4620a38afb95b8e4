"""Real packed k-bit models: pack the layers a quant config selects with a library's kernels, then measure
what the model occupies and how fast it runs next to its 16-bit self (ksir.quant.backends is the registry)."""
