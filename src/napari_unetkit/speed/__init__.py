"""The speed layer: how the predictor's network runs fast; the results equal the plain model's.

Nothing here changes what is computed beyond floating-point rounding (and the 16-bit levels
that :mod:`~napari_unetkit.speed.precision` chooses); removing the layer would leave a correct
but slower engine.

Modules
    :mod:`~napari_unetkit.speed.inference`
        The network the predictor runs: an eval copy of the model with batch norm folded,
        channels-last memory, decoders without concatenation and per-level float types.
    :mod:`~napari_unetkit.speed.fused_layers`
        Layers of that copy that do two layers' work in one pass.
    :mod:`~napari_unetkit.speed.precision`
        ``float32`` / ``mixed`` / ``half``: which levels run in 16 bits, and whether the
        hardware computes 16-bit types natively.
    :mod:`~napari_unetkit.speed.memory`
        Hands the C heaps' free pages back to the system between slices; asks PyTorch for
        huge pages in processes that are wholly this package's (the ``unetkit`` command).
"""
