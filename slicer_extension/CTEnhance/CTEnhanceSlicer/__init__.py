"""The Slicer-side pieces of the CT Enhance module (they import ``slicer``, ``qt``, ``vtk``; the decisions
behind them live in the Slicer-free ``CTEnhanceLib``).

Modules:
    * :mod:`~CTEnhanceSlicer.qtprocess`: the terminal client in a ``qt.QProcess``, polled from the GUI thread.
    * :mod:`~CTEnhanceSlicer.scene`: inputs written for upload, the result loaded under the input's study,
      the result saved as a derived DICOM series.
    * :mod:`~CTEnhanceSlicer.views`: the comparison and X-ray result layouts.
    * :mod:`~CTEnhanceSlicer.uncertainty`: a diffusion result's uncertainty loaded beside it and shown over
      the result views.
"""
