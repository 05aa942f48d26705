"""The uncertainty overlay in Slicer (decisions in ``CTEnhanceLib.overlay``).

A diffusion result's uncertainty (per-voxel standard deviation of the samples, HU) is loaded as its
own volume ``<input> — uncertainty (AI, HU std)`` beside the result (same study, same transform), and
the result node refers to it (node reference :data:`UNCERTAINTY_REFERENCE`, kept in a saved scene).
It is coloured with :data:`~CTEnhanceLib.overlay.COLOR_NODE_IDS` from 0 HU to its 99th percentile,
transparent below 5 % of that, with a colour legend in HU, and shown as the foreground layer of the
result views only; the original views never show it. The result views carry a line saying the image
holds AI-generated detail whenever the server says so (``ai_generated``).
"""
from __future__ import annotations

import json

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode

from CTEnhanceLib import layout, overlay
from CTEnhanceSlicer import scene

UNCERTAINTY_REFERENCE = "CTEnhanceUncertainty"
"""Node reference role from a result to its uncertainty volume."""
LEGEND_TITLE = "Uncertainty (HU std)"
BANNER_CORNER = vtk.vtkCornerAnnotation.UpperEdge
"""Where the AI-generated line goes in a slice view (Slicer's own annotations use the four corners)."""


def loadUncertainty(path: str, reference: vtkMRMLScalarVolumeNode,
                    result: vtkMRMLScalarVolumeNode) -> vtkMRMLScalarVolumeNode:
    """Load ``path`` as ``<reference> — uncertainty (AI, HU std)`` beside ``reference`` and refer to it from
    ``result``; coloured and windowed for the overlay.

    Raises:
        RuntimeError: the file cannot be loaded.
    """
    name = overlay.uncertainty_name(reference.GetName())
    node = slicer.util.loadVolume(path, {"name": name, "show": False, "singleFile": True})
    try:
        node.SetName(name)
        storage = node.GetStorageNode()
        if storage is not None:  # the file is temporary: new, unsaved data
            slicer.mrmlScene.RemoveNode(storage)
        node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
        scene.placeBeside(node, reference)
        styleUncertainty(node)
        result.SetNodeReferenceID(UNCERTAINTY_REFERENCE, node.GetID())
    except Exception:
        slicer.mrmlScene.RemoveNode(node)
        raise
    return node


def uncertaintyOf(result: vtkMRMLScalarVolumeNode | None) -> vtkMRMLScalarVolumeNode | None:
    """The uncertainty volume of ``result``, while both are in the scene."""
    return result.GetNodeReference(UNCERTAINTY_REFERENCE) if result is not None else None


def styleUncertainty(node: vtkMRMLScalarVolumeNode) -> overlay.OverlayWindow:
    """Colour map, window (0 to the 99th percentile) and transparency threshold of an uncertainty volume."""
    import numpy as np

    window = overlay.overlay_window(float(np.percentile(slicer.util.arrayFromVolume(node),
                                                        overlay.WINDOW_PERCENTILE)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    colorId = next((i for i in overlay.COLOR_NODE_IDS if slicer.mrmlScene.GetNodeByID(i) is not None), None)
    if colorId is not None:
        display.SetAndObserveColorNodeID(colorId)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(window.lower, window.upper)
    display.SetAutoThreshold(False)
    display.SetApplyThreshold(True)
    display.SetThreshold(window.threshold, max(window.upper, float(node.GetImageData().GetScalarRange()[1])))
    return window


def showOverlay(result: vtkMRMLScalarVolumeNode, shown: bool, opacity: float) -> None:
    """Put the uncertainty of ``result`` (if any) over the result views of the comparison layout, or take it
    off; write the AI-generated line on the result views. Needs the comparison layout shown."""
    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:
        return
    uncertainty = uncertaintyOf(result)
    plan = overlay.overlay_plan(result.GetID(), uncertainty.GetID() if uncertainty else None, shown)
    for view in layout.VIEWS:
        widget = layoutManager.sliceWidget(view.tag)
        if widget is None:
            continue
        composite = widget.mrmlSliceCompositeNode()
        composite.SetForegroundVolumeID(plan[view.tag])
        composite.SetForegroundOpacity(float(opacity) if plan[view.tag] else 0.0)
    details = json.loads(result.GetAttribute(scene.RESULT_ATTRIBUTE) or "{}")
    showBanner(overlay.banner_text(details, shown if uncertainty is not None else None))
    if uncertainty is not None:
        _showLegend(uncertainty, shown, [layoutManager.sliceWidget(v.tag) for v in layout.VIEWS
                                         if v.row in overlay.RESULT_ROWS])


def showBanner(text: str) -> None:
    """Write ``text`` at the top of each result view ("" clears it)."""
    layoutManager = slicer.app.layoutManager()
    for view in layout.VIEWS:
        widget = layoutManager.sliceWidget(view.tag) if layoutManager is not None else None
        if widget is None or view.row not in overlay.RESULT_ROWS:
            continue
        sliceView = widget.sliceView()
        sliceView.cornerAnnotation().SetText(BANNER_CORNER, text)
        sliceView.forceRender()


def bannerText(view: str) -> str:
    """The line at the top of the view tagged ``view`` (for the self-test)."""
    widget = slicer.app.layoutManager().sliceWidget(view)
    return widget.sliceView().cornerAnnotation().GetText(BANNER_CORNER) or ""


def _showLegend(uncertainty: vtkMRMLScalarVolumeNode, shown: bool, widgets: list) -> None:
    """A colour legend in HU for the uncertainty, on the result views, while the overlay is shown."""
    colors = slicer.modules.colors.logic()
    legend = colors.GetColorLegendDisplayNode(uncertainty) or colors.AddDefaultColorLegendDisplayNode(uncertainty)
    if legend is None:
        return
    legend.SetTitleText(LEGEND_TITLE)
    legend.SetLabelFormat("%.0f HU")
    legend.RemoveAllViewNodeIDs()
    for widget in widgets:
        if widget is not None:
            legend.AddViewNodeID(widget.mrmlSliceNode().GetID())
    legend.SetVisibility(bool(shown))
