"""Volumes in and out of the scene: inputs written for upload, the result loaded under the input's study,
and the result saved as a derived DICOM series of that study (Slicer's own DICOM exporter).
"""
from __future__ import annotations

import logging
import os
import shutil

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _

from CTEnhanceLib import layout
from CTEnhanceLib.derived import derived_series_tags
from CTEnhanceLib.geometry import Grid
from CTEnhanceSlicer.views import ResultViews

CT_WINDOW_LEVEL = (1500.0, -300.0)
"""Window and level (HU) of a CT estimated from X-rays: lungs to bone at a glance."""
RESULT_ATTRIBUTE = "CTEnhance.result"
"""Node attribute of every result: the server's result JSON (model, geometry, notes)."""
FRAME_OF_REFERENCE_TAG = "0020,0052"
SERIES_DESCRIPTION_TAG = "0008,103e"
SERIES_NUMBER_TAG = "0020,0011"


def writeVolume(node: vtkMRMLScalarVolumeNode, path: str) -> str:
    """Write ``node`` to ``path`` (its own geometry, no parent transform) without touching its storage node.

    Raises:
        RuntimeError: the file could not be written.
    """
    if not slicer.util.exportNode(node, path, {"useCompression": 0}):
        raise RuntimeError(_("Could not write {name} to a temporary file in {folder}; check the free disk "
                             "space.").format(name=node.GetName(), folder=os.path.dirname(path)))
    return path


def dicomSourceFile(node: vtkMRMLScalarVolumeNode, path: str) -> str | None:
    """Copy the single DICOM file a radiograph was loaded from to ``path`` (its tags carry the projection
    geometry that a NRRD would lose); ``None`` when the node did not come from one DICOM file."""
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if len(uids) != 1 or database is None:
        return None
    source = database.fileForInstance(uids[0])
    if not source or not os.path.isfile(source):
        return None
    shutil.copyfile(source, path)
    return path


def loadResult(path: str, reference: vtkMRMLScalarVolumeNode, xray: bool = False,
               details: str = "", name: str = "") -> vtkMRMLScalarVolumeNode:
    """Load ``path`` as a new volume named ``name`` (default ``<input> enhanced (AI-generated)``) beside
    ``reference``: under its transform and its study in the subject hierarchy, with its display (a CT
    estimated from X-rays gets a CT window instead of the radiograph's). ``details``: the server's result
    JSON, kept as an attribute."""
    name = name or layout.result_name(reference.GetName(), xray=xray)
    node = slicer.util.loadVolume(path, {"name": name, "show": False, "singleFile": True})
    try:
        node.SetName(name)
        storage = node.GetStorageNode()
        if storage is not None:  # the file is temporary: the result is new, unsaved data
            slicer.mrmlScene.RemoveNode(storage)
        node.SetAttribute(RESULT_ATTRIBUTE, details or "{}")
        node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
        placeBeside(node, reference)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        if xray:
            node.GetDisplayNode().SetAutoWindowLevel(False)
            node.GetDisplayNode().SetWindowLevel(*CT_WINDOW_LEVEL)
        else:
            ResultViews.copyDisplay(reference, node)
    except Exception:
        slicer.mrmlScene.RemoveNode(node)
        raise
    return node


def placeBeside(node, reference) -> int:
    """Put ``node`` under ``reference``'s parent in the subject hierarchy (its study, for DICOM data); the parent."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    parent = shNode.GetItemParent(shNode.GetItemByDataNode(reference))
    shNode.SetItemParent(shNode.GetItemByDataNode(node), parent)
    return parent


def studyOf(node) -> int:
    """The subject-hierarchy study item ``node`` sits under when that study came from DICOM, else 0."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = shNode.GetItemParent(shNode.GetItemByDataNode(node))
    uid = shNode.GetItemUID(study, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()) if study else ""
    return study if uid else 0


def exportDicomSeries(result: vtkMRMLScalarVolumeNode, reference: vtkMRMLScalarVolumeNode, folder: str,
                      model: str = "") -> str:
    """Write ``result`` as a derived DICOM series of ``reference``'s study into ``folder`` and add it to
    Slicer's DICOM database; the folder of the written files.

    Patient and study tags come from the study item both nodes sit under (so the series joins that
    study, also in a PACS); the series says it is AI-generated and keeps the input's frame of reference.

    Raises:
        RuntimeError: the input did not come from DICOM (no study to join), or the export failed.
    """
    import DICOMScalarVolumePlugin

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = studyOf(reference)
    if not study:
        raise RuntimeError(_("The input was not loaded from DICOM, so there is no study to add the result to; "
                             "save it with File > Save instead."))
    item = shNode.GetItemByDataNode(result)
    shNode.SetItemParent(item, study)
    exporter = DICOMScalarVolumePlugin.DICOMScalarVolumePluginClass()
    exportables = exporter.examineForExport(item)
    if not exportables:
        raise RuntimeError(_("Slicer's DICOM exporter cannot export {name}.").format(name=result.GetName()))
    tags = _studyTags(shNode, study)
    tags.update(derived_series_tags(*_inputSeriesTags(reference), model=model))
    for exportable in exportables:
        exportable.directory = folder
        for name, value in tags.items():
            exportable.setTag(name, value)
    error = exporter.export(exportables)
    if error:
        raise RuntimeError(_("The DICOM export failed: {error}").format(error=error))
    written = os.path.join(folder, f"ScalarVolume_{item}")
    _importIntoDatabase(written)
    return written


def _studyTags(shNode, study: int) -> dict[str, str]:
    """The patient and study tags of the exporter, from the study item and its patient (what Slicer's
    DICOM export dialog copies)."""
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    prefix = constants.GetDICOMAttributePrefix()
    patient = shNode.GetItemParent(study)
    tags = {}
    for item, names in ((patient, constants.GetDICOMPatientTagNames()), (study, constants.GetDICOMStudyTagNames())):
        for name in names:
            tags[name] = shNode.GetItemAttribute(item, prefix + name)
    tags["StudyInstanceUID"] = shNode.GetItemUID(study, constants.GetDICOMUIDName())
    return tags


def _inputSeriesTags(reference: vtkMRMLScalarVolumeNode) -> tuple[str, str, str]:
    """The input's (SeriesDescription, SeriesNumber, FrameOfReferenceUID) from the DICOM database ("" when unknown)."""
    uids = (reference.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return reference.GetName(), "", ""
    values = [database.instanceValue(uids[0], tag) for tag in (SERIES_DESCRIPTION_TAG, SERIES_NUMBER_TAG,
                                                                 FRAME_OF_REFERENCE_TAG)]
    return values[0] or reference.GetName(), values[1], values[2]


def _importIntoDatabase(folder: str) -> None:
    """Add the written files to Slicer's DICOM database (from there: the DICOM browser, sending to a PACS)."""
    if getattr(slicer, "dicomDatabase", None) is None or not slicer.dicomDatabase.isOpen:
        logging.info("CT Enhance: no DICOM database open; the series is only in %s", folder)
        return
    from DICOMLib import DICOMUtils

    DICOMUtils.importDicom(folder)


def volumeGrid(node: vtkMRMLScalarVolumeNode) -> Grid:
    """The voxel grid of ``node`` in RAS (its own geometry, no parent transform)."""
    directions = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions)
    axes = tuple(tuple(directions.GetElement(row, column) for row in range(3)) for column in range(3))
    return Grid(tuple(node.GetImageData().GetDimensions()), tuple(node.GetSpacing()), tuple(node.GetOrigin()), axes)
