"""napari widgets (Qt). Nothing is imported here so that ``import napari_msam.widgets`` stays cheap;
napari loads each widget class through the manifest (``napari.yaml``)."""
