"""CT Enhance's Slicer-free library: the MONAI Label client and the pure decisions behind the module's views.

Nothing here imports ``slicer``, ``qt``, ``vtk`` or ``monailabel``, so every module runs and is tested
in a plain Python (3.10-3.12), and :mod:`CTEnhanceLib.client` works from a terminal::

    python -m CTEnhanceLib.client --server http://127.0.0.1:8000 enhance IN OUT --target-spacing 1

Modules:
    * :mod:`~CTEnhanceLib.client`: the client of the server: URLs, timeouts, TLS, requests (its API).
    * :mod:`~CTEnhanceLib.transfer`: the chunked multipart upload and the streamed download.
    * :mod:`~CTEnhanceLib.progress`: progress reports and cancellation from another thread.
    * :mod:`~CTEnhanceLib.errors`: every failure as one sentence a user can act on.
    * :mod:`~CTEnhanceLib.cli`: the terminal command (``python -m CTEnhanceLib.client``).
    * :mod:`~CTEnhanceLib.tasks`: which of the server's tasks return an image, and their parameters.
    * :mod:`~CTEnhanceLib.jobs`: run a client call off the GUI thread and poll its progress.
    * :mod:`~CTEnhanceLib.layout`: the 2x3 comparison layout and which volume each view shows.
    * :mod:`~CTEnhanceLib.geometry`: the output grid the server's super-resolution produces.
"""
