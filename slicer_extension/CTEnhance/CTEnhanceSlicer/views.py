"""The result layouts in Slicer: the 2x3 comparison and the X-ray → CT layout (decisions in ``CTEnhanceLib.layout``).

Comparison: each row is a view group of its own with linked, hot-linked slice controls, so a
row's views move together and a volume picked in one view's controller changes only its own row.
Across the rows, an observer copies each view's position, field of view and pan to its twin (same
orientation, other row) whenever either moves, so both rows always show the same anatomy. Slice
intersections are switched on; the two volumes' window/level are kept equal.
"""
from __future__ import annotations

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from CTEnhanceLib import layout


class ResultViews(VTKObservationMixin):
    """Sets up, keeps in step and leaves the result layouts (mixed into the module's Logic)."""

    def __init__(self) -> None:
        VTKObservationMixin.__init__(self)
        self.previousLayout: int | None = None
        self._syncing = False
        self._rowObservations: list[tuple[object, int]] = []

    def showComparison(self, original: vtkMRMLScalarVolumeNode, enhanced: vtkMRMLScalarVolumeNode) -> None:
        """Switch to the 2x3 layout: original on top, enhanced below, each row linked in its own view group.

        Raises:
            RuntimeError: Slicer runs without its main window (no layout manager).
        """
        layoutManager = self._switchLayout(layout.LAYOUT_ID, layout.layout_xml())
        volumeIds = layout.volumes_by_view(original.GetID(), enhanced.GetID())
        widgets = {view.tag: self._sliceWidget(layoutManager, view.tag) for view in layout.VIEWS}
        for view in layout.VIEWS:
            self._showInView(widgets[view.tag], view, volumeIds[view.tag], layout.view_group(view))
        for view in layout.VIEWS:
            if view.row == "original":
                self._alignSlice(widgets[view.tag].mrmlSliceNode(),
                                 widgets[layout.twin_view(view).tag].mrmlSliceNode())
        for widget in widgets.values():
            composite = widget.mrmlSliceCompositeNode()
            composite.SetLinkedControl(True)
            composite.SetHotLinkedControl(True)
        self.keepRowsAligned({tag: widget.mrmlSliceNode() for tag, widget in widgets.items()})
        self.showSliceIntersections()
        self.copyDisplay(original, enhanced)
        self.linkWindowLevel(original, enhanced)

    def keepRowsAligned(self, sliceNodes: dict) -> None:
        """Copy each comparison view's position to its twin in the other row whenever it changes."""
        for node, tag in self._rowObservations:
            node.RemoveObserver(tag)
        self._rowObservations = []
        for view in layout.VIEWS:
            source, target = sliceNodes[view.tag], sliceNodes[layout.twin_view(view).tag]
            tag = source.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                     lambda caller, event, target=target: self._followTwin(caller, target))
            self._rowObservations.append((source, tag))

    def _followTwin(self, source, target) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            self._alignSlice(source, target)
        finally:
            self._syncing = False

    @staticmethod
    def showSliceIntersections() -> None:
        """Show where the other views cut each slice view (Slicer 5's application-wide setting)."""
        logic = slicer.app.applicationLogic()
        logic.SetIntersectingSlicesEnabled(slicer.vtkMRMLApplicationLogic.IntersectingSlicesVisibility, True)

    def showXrayResult(self, frontal: vtkMRMLScalarVolumeNode, lateral: vtkMRMLScalarVolumeNode,
                       result: vtkMRMLScalarVolumeNode) -> None:
        """Switch to the X-ray layout: each radiograph in a view turned to its own plane (not linked),
        the estimated CT below in linked axial, coronal and sagittal views.

        Raises:
            RuntimeError: Slicer runs without its main window (no layout manager).
        """
        layoutManager = self._switchLayout(layout.XRAY_LAYOUT_ID, layout.xray_layout_xml())
        volumeIds = layout.xray_volumes_by_view(frontal.GetID(), lateral.GetID(), result.GetID())
        for view in layout.XRAY_VIEWS:
            widget = self._sliceWidget(layoutManager, view.tag)
            self._showInView(widget, view, volumeIds[view.tag], layout.view_group(view))
            if view.row == "xray":  # a radiograph is one slice: look at its own plane
                widget.mrmlSliceNode().RotateToVolumePlane(slicer.mrmlScene.GetNodeByID(volumeIds[view.tag]))
                widget.sliceLogic().FitSliceToAll()
            else:
                composite = widget.mrmlSliceCompositeNode()
                composite.SetLinkedControl(True)
                composite.SetHotLinkedControl(True)
        self.showSliceIntersections()

    @staticmethod
    def copyDisplay(source: vtkMRMLScalarVolumeNode, target: vtkMRMLScalarVolumeNode) -> None:
        """Give ``target`` the colour map, window/level and interpolation of ``source``."""
        src, dst = source.GetDisplayNode(), target.GetDisplayNode()
        if src is None or dst is None:
            return
        dst.SetAndObserveColorNodeID(src.GetColorNodeID())
        dst.SetInterpolate(src.GetInterpolate())
        dst.SetAutoWindowLevel(False)
        dst.SetWindowLevel(src.GetWindow(), src.GetLevel())

    def linkWindowLevel(self, original: vtkMRMLScalarVolumeNode, enhanced: vtkMRMLScalarVolumeNode) -> None:
        """Keep the two volumes' window/level equal whichever one the user adjusts."""
        self.removeObservers()
        pair = (original.GetDisplayNode(), enhanced.GetDisplayNode())
        if None in pair:
            return
        for source, target in (pair, pair[::-1]):
            self.addObserver(source, vtk.vtkCommand.ModifiedEvent,
                             lambda caller, event, target=target: self._copyWindowLevel(caller, target))

    def _copyWindowLevel(self, source, target) -> None:
        if self._syncing:
            return
        if (target.GetWindow(), target.GetLevel()) == (source.GetWindow(), source.GetLevel()):
            return
        self._syncing = True
        try:
            target.SetAutoWindowLevel(False)
            target.SetWindowLevel(source.GetWindow(), source.GetLevel())
        finally:
            self._syncing = False

    def _switchLayout(self, layoutId: int, description: str):
        """Register (or update) a result layout and show it, remembering the layout to go back to.

        Raises:
            RuntimeError: Slicer runs without its main window (no layout manager).
        """
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            raise RuntimeError(_("The result views need Slicer's main window."))
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        if layoutNode.IsLayoutDescription(layoutId):
            layoutNode.SetLayoutDescription(layoutId, description)
        else:
            layoutNode.AddLayoutDescription(layoutId, description)
        if layoutManager.layout not in (layout.LAYOUT_ID, layout.XRAY_LAYOUT_ID):
            self.previousLayout = layoutManager.layout
        layoutManager.setLayout(layoutId)
        return layoutManager

    def comparisonShown(self) -> bool:
        layoutManager = slicer.app.layoutManager()
        return layoutManager is not None and layoutManager.layout in (layout.LAYOUT_ID, layout.XRAY_LAYOUT_ID)

    def restorePreviousLayout(self) -> None:
        """Return to the layout shown before the result layout."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(layout.layout_to_restore(self.previousLayout, layoutManager.layout))

    @staticmethod
    def _sliceWidget(layoutManager, tag: str):
        widget = layoutManager.sliceWidget(tag)
        if widget is None:
            raise RuntimeError(f"Slicer did not create the view {tag} of the result layout")
        return widget

    @staticmethod
    def _showInView(widget, view: layout.ViewSpec, volumeId: str, group: int) -> None:
        """Give one view its group, orientation and volume (links off while the row's volume is set)."""
        sliceNode, composite = widget.mrmlSliceNode(), widget.mrmlSliceCompositeNode()
        composite.SetLinkedControl(False)
        composite.SetHotLinkedControl(False)
        sliceNode.SetViewGroup(group)
        sliceNode.SetOrientation(view.orientation)
        composite.SetBackgroundVolumeID(volumeId)
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        widget.sliceLogic().FitSliceToAll()

    @staticmethod
    def _alignSlice(source, target) -> None:
        """Put ``target`` at ``source``'s position, field of view and pan."""
        target.SetFieldOfView(*source.GetFieldOfView())
        target.SetXYZOrigin(*source.GetXYZOrigin())
        target.GetSliceToRAS().DeepCopy(source.GetSliceToRAS())
        target.UpdateMatrices()
