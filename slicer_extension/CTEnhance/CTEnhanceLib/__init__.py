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
    * :mod:`~CTEnhanceLib.process`: the client as a child process (command, progress lines, outcome) and
      the Enhance button's state machine.
    * :mod:`~CTEnhanceLib.jobs`: run a client call on a thread and poll its progress (scripts; not inside
      Slicer, whose GUI thread starves Python threads).
    * :mod:`~CTEnhanceLib.derived`: the tags of a result saved as a derived DICOM series.
    * :mod:`~CTEnhanceLib.stubserver`: a stand-in server with the real one's API, for the self-test.
    * :mod:`~CTEnhanceLib.layout`: the 2x3 comparison layout and which volume each view shows.
    * :mod:`~CTEnhanceLib.overlay`: a diffusion result's uncertainty: where to fetch and keep it, its name,
      its colour range, the views that show it, the AI-generated line.
    * :mod:`~CTEnhanceLib.geometry`: the output grid the server's super-resolution produces.
"""
