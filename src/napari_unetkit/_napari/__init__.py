"""The napari side of napari-unetkit: widgets, sample data and menu commands.

Everything here translates napari layers into engine calls and engine results into new layers;
the engine modules one level up never import this package.
"""
