"""What the module does, usable without its panel (scripts, the self-test).

Network work runs in the terminal client as a child process (:mod:`CTEnhanceSlicer.qtprocess`),
never on a Python thread of Slicer (PythonQt keeps the GIL on the GUI thread while idle, which
would starve it). Everything that touches the scene runs on the calling (GUI) thread:
:meth:`EnhanceLogic.startEnhance` writes the inputs, :meth:`~EnhanceLogic.finishEnhance` loads the
result (and a diffusion result's uncertainty) under the input's study, :meth:`~EnhanceLogic.showResult`
sets up the views and the uncertainty overlay. Every task runs this way: super-resolution
(``<input> enhanced (AI-generated)``), denoising (``<input> (AI-denoised)``) and X-ray → CT.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from CTEnhanceLib import layout, overlay
from CTEnhanceLib.client import parse_server_url
from CTEnhanceLib.process import enhance_command, info_command
from CTEnhanceLib.tasks import DENOISE_TASK, SR_TASK
from CTEnhanceSlicer import scene, uncertainty
from CTEnhanceSlicer.qtprocess import QtClientProcess
from CTEnhanceSlicer.views import ResultViews

CONNECT_TIMEOUT_S = 30.0
INPUT_ATTRIBUTE = "CTEnhance.inputNodeID"
"""Node attribute of a result: the id of the volume it was made from."""


@dataclass
class EnhanceRun:
    """One Enhance request in flight.

    Attributes:
        process: the client process.
        inputNodeIds: input key (``image``, ``label``) -> the node id it was written from.
        folder: temporary folder holding the uploaded copies and the result (removed when finished).
        output: the result file inside ``folder``.
        task: the server task.
    """

    process: QtClientProcess
    inputNodeIds: dict[str, str]
    folder: str
    output: str
    task: str


class EnhanceLogic(ScriptedLoadableModuleLogic, ResultViews):
    """Connect, enhance, load, show, save as DICOM (see the module docstring)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ResultViews.__init__(self)
        self.uncertaintyShown = True
        self.uncertaintyOpacity = overlay.DEFAULT_OPACITY
        self._shownResultId: str | None = None

    @staticmethod
    def startConnect(serverUrl: str, token: str = "") -> QtClientProcess:
        """Start reading the server's image-output tasks (``process.result()["tasks"]``).

        Raises:
            ClientError: the URL is not valid.
        """
        parse_server_url(serverUrl)
        return QtClientProcess(info_command(serverUrl, token, CONNECT_TIMEOUT_S))

    def startEnhance(self, inputs: dict[str, vtkMRMLScalarVolumeNode], serverUrl: str, task: str, params: dict,
                     readTimeoutS: float = 3600.0, token: str = "") -> EnhanceRun:
        """Write the inputs to a temporary folder and start the client process on them.

        Raises:
            ClientError: the URL is not valid.
            RuntimeError: an input is missing or cannot be written.
        """
        parse_server_url(serverUrl)
        missing = [key for key, node in inputs.items() if node is None or node.GetImageData() is None]
        if missing:
            raise RuntimeError(_("Select a volume with image data for: {inputs}.").format(inputs=", ".join(missing)))
        folder = tempfile.mkdtemp(prefix="CTEnhance-", dir=slicer.app.temporaryPath)
        try:
            xray = "label" in inputs
            paths = {key: (scene.dicomSourceFile(node, os.path.join(folder, f"{key}.dcm")) if xray else None)
                     or scene.writeVolume(node, os.path.join(folder, f"{key}.nrrd")) for key, node in inputs.items()}
            output = os.path.join(folder, "result.nrrd")
            command = enhance_command(serverUrl, paths, output, task, params, float(readTimeoutS), token=token)
            process = QtClientProcess(command)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return EnhanceRun(process, {key: node.GetID() for key, node in inputs.items()}, folder, output, task)

    def finishEnhance(self, run: EnhanceRun) -> vtkMRMLScalarVolumeNode:
        """Load an ended run's result as ``<input> enhanced (AI-generated)`` (denoising: ``<input>
        (AI-denoised)``) under the input's study, and its uncertainty, when it has one, beside it (both or
        neither); always removes its temporary folder.

        Raises:
            ClientError: the request failed (:class:`~CTEnhanceLib.errors.Cancelled` when cancelled).
            RuntimeError: the input left the scene meanwhile, or the result cannot be loaded.
        """
        try:
            record = run.process.result()
            reference = slicer.mrmlScene.GetNodeByID(run.inputNodeIds["image"])
            if reference is None:
                raise RuntimeError(_("The input volume left the scene while it was being enhanced; the result "
                                     "was discarded."))
            details, xray = record.get("server", {}), "label" in run.inputNodeIds
            name = layout.result_name(reference.GetName(), xray=xray, denoised=run.task == DENOISE_TASK,
                                      ai_generated=details.get("ai_generated") is True)
            node = scene.loadResult(run.output, reference, xray=xray, details=json.dumps(details), name=name)
            node.SetAttribute(INPUT_ATTRIBUTE, reference.GetID())
            if record.get("uncertainty"):
                try:
                    uncertainty.loadUncertainty(record["uncertainty"], reference, node)
                except Exception:
                    slicer.mrmlScene.RemoveNode(node)
                    raise
            return node
        finally:
            shutil.rmtree(run.folder, ignore_errors=True)

    def process(self, inputs: dict[str, vtkMRMLScalarVolumeNode], serverUrl: str, task: str = SR_TASK,
                params: dict | None = None, readTimeoutS: float = 3600.0, showResult: bool = True,
                token: str = "") -> vtkMRMLScalarVolumeNode:
        """Enhance and wait (the GUI keeps processing events); for scripts and tests."""
        run = self.startEnhance(inputs, serverUrl, task, params or {}, readTimeoutS, token)
        while not run.process.poll():
            slicer.app.processEvents()
            time.sleep(0.02)
        enhanced = self.finishEnhance(run)
        if showResult:
            self.showResult(run, enhanced)
        return enhanced

    def showResult(self, run: EnhanceRun, result: vtkMRMLScalarVolumeNode) -> None:
        """The comparison layout for an enhanced CT; the X-ray layout for a CT estimated from two X-rays."""
        nodes = {key: slicer.mrmlScene.GetNodeByID(nodeId) for key, nodeId in run.inputNodeIds.items()}
        if "label" in nodes:
            self.showXrayResult(nodes["image"], nodes["label"], result)
            self._shownResultId = None
            return
        self.showComparison(nodes["image"], result)
        self._shownResultId = result.GetID()
        self.setUncertaintyDisplay(self.uncertaintyShown, self.uncertaintyOpacity)

    def setUncertaintyDisplay(self, shown: bool, opacity: float) -> None:
        """Show or hide the uncertainty overlay of the result in the comparison views, at ``opacity`` (0..1)."""
        self.uncertaintyShown, self.uncertaintyOpacity = bool(shown), float(opacity)
        result = slicer.mrmlScene.GetNodeByID(self._shownResultId) if self._shownResultId else None
        if result is not None and self.comparisonShown():
            uncertainty.showOverlay(result, self.uncertaintyShown, self.uncertaintyOpacity)

    @staticmethod
    def uncertaintyOf(result: vtkMRMLScalarVolumeNode | None) -> vtkMRMLScalarVolumeNode | None:
        """The uncertainty volume of ``result``, if it has one."""
        return uncertainty.uncertaintyOf(result)

    @staticmethod
    def inputOf(result: vtkMRMLScalarVolumeNode | None) -> vtkMRMLScalarVolumeNode | None:
        """The volume ``result`` was made from, while it is in the scene."""
        nodeId = result.GetAttribute(INPUT_ATTRIBUTE) if result is not None else None
        return slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None

    def canSaveAsDicom(self, result: vtkMRMLScalarVolumeNode | None) -> bool:
        """Whether ``result`` can become a derived series: its input is in the scene and came from DICOM."""
        reference = self.inputOf(result)
        return reference is not None and bool(scene.studyOf(reference))

    def saveAsDicom(self, result: vtkMRMLScalarVolumeNode, folder: str) -> str:
        """Write ``result`` as a derived series of its input's study into ``folder``; the written folder.

        Raises:
            RuntimeError: the input is gone or did not come from DICOM, or the export failed.
        """
        reference = self.inputOf(result)
        if reference is None:
            raise RuntimeError(_("The volume this result was made from is no longer in the scene."))
        details = json.loads(result.GetAttribute(scene.RESULT_ATTRIBUTE) or "{}")
        return scene.exportDicomSeries(result, reference, folder, model=str(details.get("model", "")))
