"""CT Enhance: one-click enhancement of a CT by a MONAI Label server, original and result side by side.

The Slicer side stays thin: widget wiring, writing the input volume to a temporary file, loading
the result, and setting up views. Everything else (HTTP, progress, cancel, the layout's XML and
view assignment, the expected output grid) lives in the Slicer-free ``CTEnhanceLib``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from CTEnhanceLib import layout
from CTEnhanceLib.client import Cancelled, Client, ClientError, Timeouts, server_url_warnings
from CTEnhanceLib.geometry import Grid, super_resolution_grid
from CTEnhanceLib.jobs import BackgroundJob
from CTEnhanceLib.tasks import SR_TASK, TaskInfo

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
SERVER_URL_SETTING = "CTEnhance/ServerURL"
CONNECT_TIMEOUTS = Timeouts(connect=5.0, read=30.0)
POLL_INTERVAL_MS = 200
CT_WINDOW_LEVEL = (1500.0, -300.0)
"""Window and level (HU) of a CT estimated from X-rays: lungs to bone at a glance."""


class CTEnhance(ScriptedLoadableModule):
    """Module description for Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CT Enhance")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["CT Enhance developers"]
        self.parent.helpText = _(
            "Enhance a CT on a CT Enhance MONAI Label server (thick slices to thin ones) and compare the "
            "original (top row) and the enhanced volume (bottom row) in linked axial, coronal and sagittal "
            "views. Connect to the server, pick the volume, click Enhance. See docs/slicer.md.")
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer's scripted module template and MONAI Label.")


@parameterNodeWrapper
class CTEnhanceParameterNode:
    """The module's settings, saved with the scene.

    serverUrl: the MONAI Label server.
    inputVolume: the CT to enhance.
    frontalXray, lateralXray: the X-ray pair, for tasks that take one.
    targetSpacing: output slice spacing in mm.
    adapt: first fine-tune the model on this scan ("Adapt to this scan").
    adaptSeconds: the time budget of that adaptation, in seconds.
    readTimeoutS: how long to wait for the server's answer (the whole inference), in seconds.
    enhancedVolume: the latest result.
    """

    serverUrl: str = DEFAULT_SERVER_URL
    inputVolume: vtkMRMLScalarVolumeNode
    frontalXray: vtkMRMLScalarVolumeNode
    lateralXray: vtkMRMLScalarVolumeNode
    targetSpacing: Annotated[float, WithinRange(0.05, 20.0)] = 1.0
    adapt: bool = False
    adaptSeconds: Annotated[int, WithinRange(10, 3600)] = 120
    readTimeoutS: Annotated[int, WithinRange(10, 86400)] = 3600
    enhancedVolume: vtkMRMLScalarVolumeNode


class CTEnhanceWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: server, inputs, Enhance/Cancel with progress, errors, layout switch."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: CTEnhanceLogic | None = None
        self._parameterNode: CTEnhanceParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._tasks: list[TaskInfo] = []
        self._job: BackgroundJob | None = None
        self._onJobDone = None
        self._run: EnhanceRun | None = None
        self._timer = qt.QTimer()

    def setup(self) -> None:
        """Build the panel from the .ui file and wire it."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTEnhance.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTEnhanceLogic()

        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.serverUrlLineEdit.connect("editingFinished()", self._showUrlAdvice)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self._onTaskChanged)
        self.ui.enhanceButton.connect("clicked(bool)", self.onEnhance)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.previousLayoutButton.connect("clicked(bool)", self.onPreviousLayout)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.connect("layoutChanged(int)", self._updateButtons)

        self.initializeParameterNode()
        self._showError("")
        self._setBusy(False)
        self._onTaskChanged()

    def cleanup(self) -> None:
        """The panel is destroyed: stop any request, drop observers."""
        self._cancelJob()
        self._timer.stop()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.disconnect("layoutChanged(int)", self._updateButtons)
        self.removeObservers()
        self.setParameterNode(None)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """A closing scene takes the input with it: cancel, and forget the parameter node."""
        self._cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use the scene's parameter node; pick the first volume and the last server URL used."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume
        if self._parameterNode.serverUrl == DEFAULT_SERVER_URL:
            self._parameterNode.serverUrl = str(qt.QSettings().value(SERVER_URL_SETTING, DEFAULT_SERVER_URL))

    def setParameterNode(self, inputParameterNode: CTEnhanceParameterNode | None) -> None:
        """Bind the GUI to ``inputParameterNode`` (and unbind the previous one)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def onConnect(self) -> None:
        """Read the server's tasks in the background."""
        url = self.ui.serverUrlLineEdit.text
        self._showError("")
        try:
            self._showUrlAdvice()
            job = self.logic.connectJob(url)
        except ClientError as exc:
            self._showError(str(exc))
            return
        self.ui.serverStatusLabel.text = _("Connecting to {url}...").format(url=url)
        self._startJob(job, self._onConnected)

    def onEnhance(self) -> None:
        """Start the selected task on the selected input(s)."""
        self._showError("")
        task, node = self._currentTask(), self._parameterNode
        if task is None or node is None:
            return
        inputs = ({"image": node.frontalXray, "label": node.lateralXray} if task.takes_xray_pair
                  else {"image": node.inputVolume})
        try:
            params = task.request_params(
                target_spacing=node.targetSpacing if "target_spacing" in task.params else None,
                model=self.ui.modelComboBox.currentText or None,
                device=self.ui.deviceComboBox.currentText or None,
                **task.adapt_params(node.adapt and task.can_adapt, node.adaptSeconds))
            self._run = self.logic.startEnhance(inputs, node.serverUrl, task.name, params, node.readTimeoutS)
        except (ClientError, RuntimeError, ValueError) as exc:
            self._showError(str(exc))
            return
        self._startJob(self._run.job, self._onEnhanced)

    def onCancel(self) -> None:
        """Stop the running request; the scene is left as it was."""
        if self._job is not None:
            self._job.cancel()
            self.ui.stageLabel.text = _("Cancelling...")

    def onPreviousLayout(self) -> None:
        self.logic.restorePreviousLayout()

    def _onConnected(self, job: BackgroundJob) -> None:
        try:
            self._tasks = job.result()
        except ClientError as exc:
            self._tasks = []
            self.ui.serverStatusLabel.text = _("Not connected.")
            self._showError(str(exc))
        else:
            qt.QSettings().setValue(SERVER_URL_SETTING, self.ui.serverUrlLineEdit.text)
            self.ui.serverStatusLabel.text = _("Connected: {n} image task(s).").format(n=len(self._tasks))
            if not self._tasks:
                self._showError(_("This server offers no image-output task: start it with CT Enhance's app "
                                  "(monailabel start_server --app monailabel_app ...)."))
        self._fillTasks()

    def _onEnhanced(self, job: BackgroundJob) -> None:
        run, self._run = self._run, None
        self.ui.stageLabel.text = _("Loading the result...")
        slicer.app.processEvents()
        try:
            enhanced = self.logic.finishEnhance(run)
        except Cancelled:
            self.ui.stageLabel.text = _("Cancelled; the scene is unchanged.")
            return
        except (ClientError, RuntimeError) as exc:
            logging.info("CT Enhance: %s", exc)
            self.ui.stageLabel.text = _("Failed; the scene is unchanged.")
            self._showError(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any failure is shown; the traceback goes to the log
            logging.exception("CT Enhance: loading the result failed")
            self.ui.stageLabel.text = _("Failed; the scene is unchanged.")
            self._showError(_("Loading the result failed ({error}); the Python console has the details.").format(
                error=exc))
            return
        if self._parameterNode is not None:
            self._parameterNode.enhancedVolume = enhanced
        self.logic.showResult(run, enhanced)
        self.ui.stageLabel.text = _("Done: {name}.").format(name=enhanced.GetName())
        self._updateButtons()

    def _startJob(self, job: BackgroundJob, onDone) -> None:
        self._job, self._onJobDone = job, onDone
        self._setBusy(True)
        self._timer.start()

    def _poll(self) -> None:
        """Timer tick on the GUI thread: show progress; hand a finished job to its handler."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        progress = job.progress
        fraction = progress.fraction
        self.ui.progressBar.setRange(0, 0 if fraction is None else 100)
        self.ui.progressBar.value = 0 if fraction is None else int(round(100 * fraction))
        if not job.cancelled:
            self.ui.stageLabel.text = progress.describe()
        if job.done:
            self._timer.stop()
            onDone, self._job, self._onJobDone = self._onJobDone, None, None
            self._setBusy(False)
            onDone(job)

    def _cancelJob(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _setBusy(self, busy: bool) -> None:
        self.ui.cancelButton.enabled = busy
        self.ui.connectButton.enabled = not busy
        self.ui.progressBar.visible = busy
        if not busy:
            self.ui.progressBar.setRange(0, 100)
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        """Enable Enhance only when it can run, and say why not."""
        node, task = self._parameterNode, self._currentTask()
        busy = self._job is not None
        if task is None:
            reason = _("Connect to the server first.")
        elif node is None:
            reason = _("No parameter node.")
        elif task.takes_xray_pair and not (node.frontalXray and node.lateralXray):
            reason = _("Select the frontal and the lateral X-ray.")
        elif not task.takes_xray_pair and not node.inputVolume:
            reason = _("Select the input volume.")
        else:
            reason = ""
        self.ui.enhanceButton.enabled = not busy and not reason
        self.ui.adaptSecondsSpinBox.enabled = bool(node and node.adapt)
        self.ui.enhanceButton.toolTip = reason or _("Send the input to the server and show the result.")
        self.ui.previousLayoutButton.enabled = self.logic is not None and self.logic.comparisonShown()

    def _fillTasks(self) -> None:
        combo = self.ui.taskComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for task in self._tasks:
            combo.addItem(task.name)
            combo.setItemData(combo.count - 1, task.description, qt.Qt.ToolTipRole)
        names = [task.name for task in self._tasks]
        combo.currentIndex = names.index(SR_TASK) if SR_TASK in names else (0 if names else -1)
        combo.blockSignals(wasBlocked)
        self._onTaskChanged()

    def _currentTask(self) -> TaskInfo | None:
        index = self.ui.taskComboBox.currentIndex
        return self._tasks[index] if 0 <= index < len(self._tasks) else None

    def _onTaskChanged(self, index: int = -1) -> None:
        """Show the inputs and options the selected task takes."""
        task = self._currentTask()
        xray = bool(task and task.takes_xray_pair)
        for widget in (self.ui.inputVolumeLabel, self.ui.inputVolumeSelector):
            widget.visible = not xray
        for widget in (self.ui.frontalXrayLabel, self.ui.frontalXraySelector, self.ui.lateralXrayLabel,
                       self.ui.lateralXraySelector):
            widget.visible = xray
        spacing = task is None or "target_spacing" in task.params
        self.ui.targetSpacingLabel.visible = self.ui.targetSpacingSpinBox.visible = spacing
        adapt = bool(task and task.can_adapt)
        for widget in (self.ui.adaptCheckBox, self.ui.adaptSecondsLabel, self.ui.adaptSecondsSpinBox):
            widget.visible = adapt
        for combo, param in ((self.ui.modelComboBox, "model"), (self.ui.deviceComboBox, "device")):
            self._fillChoices(combo, task.choices(param) if task else (), task.default(param) if task else None)
        self._updateButtons()

    @staticmethod
    def _fillChoices(combo, choices, default) -> None:
        combo.clear()
        for choice in choices:
            combo.addItem(choice)
        combo.enabled = bool(choices)
        if default in choices:
            combo.currentIndex = list(choices).index(default)

    def _showUrlAdvice(self) -> None:
        """Warn about URLs that will not work as meant (e.g. 0.0.0.0)."""
        try:
            warnings = server_url_warnings(self.ui.serverUrlLineEdit.text)
        except ClientError as exc:
            warnings = [str(exc)]
        self.ui.serverStatusLabel.text = " ".join(warnings)

    def _showError(self, message: str) -> None:
        self.ui.errorLabel.text = message
        self.ui.errorLabel.visible = bool(message)


@dataclass
class EnhanceRun:
    """One Enhance request in flight.

    Attributes:
        job: the client call on its worker thread.
        inputNodeIds: input key (``image``, ``label``) -> the node id it was written from.
        folder: temporary folder holding the uploaded copies and the result (removed when finished).
        output: the result file inside ``folder``.
        task: the server task.
    """

    job: BackgroundJob
    inputNodeIds: dict[str, str]
    folder: str
    output: str
    task: str


class CTEnhanceLogic(ScriptedLoadableModuleLogic, VTKObservationMixin):
    """What the module does, usable without its panel (scripts, tests).

    Network calls run on worker threads (:class:`~CTEnhanceLib.jobs.BackgroundJob`); everything that
    touches the scene runs on the calling (GUI) thread: :meth:`startEnhance` writes the inputs,
    :meth:`finishEnhance` loads the result, :meth:`showComparison` sets up the views.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        VTKObservationMixin.__init__(self)
        self.previousLayout: int | None = None
        self._syncingWindowLevel = False

    def getParameterNode(self) -> CTEnhanceParameterNode:
        return CTEnhanceParameterNode(super().getParameterNode())

    def connectJob(self, serverUrl: str) -> BackgroundJob:
        """Start reading the server's image-output tasks (``job.result()``: a list of TaskInfo).

        Raises:
            ClientError: the URL is not valid.
        """
        client = Client(serverUrl, CONNECT_TIMEOUTS)
        return BackgroundJob(lambda progress, cancel: client.tasks(cancel), name="CTEnhance connect").start()

    def startEnhance(self, inputs: dict[str, vtkMRMLScalarVolumeNode], serverUrl: str, task: str, params: dict,
                     readTimeoutS: float = 3600.0) -> EnhanceRun:
        """Write the inputs to a temporary folder and start the request on a worker thread.

        Raises:
            ClientError: the URL is not valid.
            RuntimeError: an input is missing or cannot be written.
        """
        client = Client(serverUrl, Timeouts(read=float(readTimeoutS)))
        missing = [key for key, node in inputs.items() if node is None or node.GetImageData() is None]
        if missing:
            raise RuntimeError(_("Select a volume with image data for: {inputs}.").format(inputs=", ".join(missing)))
        folder = tempfile.mkdtemp(prefix="CTEnhance-", dir=slicer.app.temporaryPath)
        try:
            xray = "label" in inputs
            paths = {key: (self.dicomSourceFile(node, os.path.join(folder, f"{key}.dcm")) if xray else None)
                     or self.writeVolume(node, os.path.join(folder, f"{key}.nrrd")) for key, node in inputs.items()}
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        output = os.path.join(folder, "result.nrrd")
        job = BackgroundJob(lambda progress, cancel: client.infer(task, paths, output, params, progress, cancel),
                            name=f"CTEnhance {task}")
        return EnhanceRun(job.start(), {key: node.GetID() for key, node in inputs.items()}, folder, output, task)

    def finishEnhance(self, run: EnhanceRun) -> vtkMRMLScalarVolumeNode:
        """Load a finished run's result as ``<input> enhanced``; always removes its temporary folder.

        Raises:
            ClientError: the request failed (:class:`~CTEnhanceLib.client.Cancelled` when cancelled).
            RuntimeError: the input left the scene meanwhile, or the result cannot be loaded.
        """
        try:
            run.job.result()
            reference = slicer.mrmlScene.GetNodeByID(run.inputNodeIds["image"])
            if reference is None:
                raise RuntimeError(_("The input volume left the scene while it was being enhanced; the result "
                                     "was discarded."))
            return self.loadResult(run.output, reference, xray="label" in run.inputNodeIds)
        finally:
            shutil.rmtree(run.folder, ignore_errors=True)

    def process(self, inputs: dict[str, vtkMRMLScalarVolumeNode], serverUrl: str, task: str = SR_TASK,
                params: dict | None = None, readTimeoutS: float = 3600.0,
                showResult: bool = True) -> vtkMRMLScalarVolumeNode:
        """Enhance and wait (the GUI keeps processing events); for scripts and tests."""
        run = self.startEnhance(inputs, serverUrl, task, params or {}, readTimeoutS)
        while not run.job.wait(0.1):
            slicer.app.processEvents()
        enhanced = self.finishEnhance(run)
        if showResult:
            self.showResult(run, enhanced)
        return enhanced

    def showResult(self, run: EnhanceRun, result: vtkMRMLScalarVolumeNode) -> None:
        """The comparison layout for an enhanced CT; the X-ray layout for a CT estimated from two X-rays."""
        nodes = {key: slicer.mrmlScene.GetNodeByID(nodeId) for key, nodeId in run.inputNodeIds.items()}
        if "label" in nodes:
            self.showXrayResult(nodes["image"], nodes["label"], result)
        else:
            self.showComparison(nodes["image"], result)

    @staticmethod
    def writeVolume(node: vtkMRMLScalarVolumeNode, path: str) -> str:
        """Write ``node`` to ``path`` (its own geometry, no parent transform) without touching its storage node."""
        if not slicer.util.exportNode(node, path, {"useCompression": 0}):
            raise RuntimeError(_("Could not write {name} to a temporary file in {folder}; check the free disk "
                                 "space.").format(name=node.GetName(), folder=os.path.dirname(path)))
        return path

    @staticmethod
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

    def loadResult(self, path: str, reference: vtkMRMLScalarVolumeNode, xray: bool = False) -> vtkMRMLScalarVolumeNode:
        """Load ``path`` as a new volume named after ``reference``, under its transform, with its display
        (a CT estimated from X-rays gets a CT window instead of the radiograph's)."""
        name = layout.result_name(reference.GetName(), xray=xray)
        node = slicer.util.loadVolume(path, {"name": name, "show": False, "singleFile": True})
        try:
            node.SetName(name)
            storage = node.GetStorageNode()
            if storage is not None:  # the file is temporary: the result is new, unsaved data
                slicer.mrmlScene.RemoveNode(storage)
            node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            if xray:
                node.GetDisplayNode().SetAutoWindowLevel(False)
                node.GetDisplayNode().SetWindowLevel(*CT_WINDOW_LEVEL)
            else:
                self.copyDisplay(reference, node)
        except Exception:
            slicer.mrmlScene.RemoveNode(node)
            raise
        return node

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
        if self._syncingWindowLevel:
            return
        if (target.GetWindow(), target.GetLevel()) == (source.GetWindow(), source.GetLevel()):
            return
        self._syncingWindowLevel = True
        try:
            target.SetAutoWindowLevel(False)
            target.SetWindowLevel(source.GetWindow(), source.GetLevel())
        finally:
            self._syncingWindowLevel = False

    def showComparison(self, original: vtkMRMLScalarVolumeNode, enhanced: vtkMRMLScalarVolumeNode) -> None:
        """Switch to the 2x3 layout: original on top, enhanced below, six linked views in one group.

        Raises:
            RuntimeError: Slicer runs without its main window (no layout manager).
        """
        layoutManager = self._switchLayout(layout.LAYOUT_ID, layout.layout_xml())
        volumeIds = layout.volumes_by_view(original.GetID(), enhanced.GetID())
        widgets = {view.tag: self._sliceWidget(layoutManager, view.tag) for view in layout.VIEWS}
        for view in layout.VIEWS:
            self._showInView(widgets[view.tag], view, volumeIds[view.tag])
        for view in layout.VIEWS:
            if view.row != "original":
                top = widgets[view.tag.replace("Enhanced", "Original", 1)].mrmlSliceNode()
                self._alignSlice(top, widgets[view.tag].mrmlSliceNode())
        for widget in widgets.values():
            composite = widget.mrmlSliceCompositeNode()
            composite.SetLinkedControl(True)
            composite.SetHotLinkedControl(True)
        self.copyDisplay(original, enhanced)
        self.linkWindowLevel(original, enhanced)

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
        """Return to the layout shown before :meth:`showComparison`."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(layout.layout_to_restore(self.previousLayout, layoutManager.layout))

    @staticmethod
    def _sliceWidget(layoutManager, tag: str):
        widget = layoutManager.sliceWidget(tag)
        if widget is None:
            raise RuntimeError(f"Slicer did not create the view {tag} of the comparison layout")
        return widget

    @staticmethod
    def _showInView(widget, view: layout.ViewSpec, volumeId: str, group: int = layout.VIEW_GROUP) -> None:
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


def volumeGrid(node: vtkMRMLScalarVolumeNode) -> Grid:
    """The voxel grid of ``node`` in RAS (its own geometry, no parent transform)."""
    directions = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions)
    axes = tuple(tuple(directions.GetElement(row, column) for row in range(3)) for column in range(3))
    return Grid(tuple(node.GetImageData().GetDimensions()), tuple(node.GetSpacing()), tuple(node.GetOrigin()), axes)


class CTEnhanceTest(ScriptedLoadableModuleTest):
    """Inside Slicer: the comparison layout, an error that leaves the scene alone, and a real Enhance.

    The Enhance test needs a server: ``CTENHANCE_SERVER_URL`` (default http://127.0.0.1:8000; the
    test is skipped when that default does not answer, and fails when a URL was given but does
    not). The CT is ``CTENHANCE_TEST_VOLUME`` (a file) or the CTChest sample (downloaded once);
    ``CTENHANCE_TEST_MODEL`` picks the model (default: the server's), ``CTENHANCE_TEST_SPACING``
    the target (default half the input's slice spacing). See docs/slicer.md.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_comparison_layout()
        self.setUp()
        self.test_xray_layout()
        self.setUp()
        self.test_failed_request_leaves_scene_unchanged()
        self.setUp()
        self.test_enhance_on_server()

    def test_comparison_layout(self) -> None:
        self.delayDisplay("Comparison layout")
        import numpy as np

        original = slicer.util.addVolumeFromArray(np.zeros((8, 16, 16), np.int16), name="thick")
        original.SetSpacing(1.0, 1.0, 4.0)
        enhanced = slicer.util.addVolumeFromArray(np.zeros((32, 16, 16), np.int16), name="thick enhanced")
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(layout.FOUR_UP_LAYOUT)
        logic = CTEnhanceLogic()
        logic.showComparison(original, enhanced)
        self.assertComparison(original, enhanced)
        logic.restorePreviousLayout()
        self.assertEqual(layoutManager.layout, layout.FOUR_UP_LAYOUT)

    def test_xray_layout(self) -> None:
        self.delayDisplay("X-ray to CT layout")
        import numpy as np

        frontal = slicer.util.addVolumeFromArray(np.zeros((1, 64, 64), np.int16), name="chest PA")
        lateral = slicer.util.addVolumeFromArray(np.zeros((1, 64, 64), np.int16), name="chest lateral")
        estimate = slicer.util.addVolumeFromArray(np.zeros((32, 32, 32), np.int16), name="chest PA CT estimate")
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(layout.FOUR_UP_LAYOUT)
        logic = CTEnhanceLogic()
        logic.showXrayResult(frontal, lateral, estimate)
        self.assertEqual(layoutManager.layout, layout.XRAY_LAYOUT_ID)
        expected = layout.xray_volumes_by_view(frontal.GetID(), lateral.GetID(), estimate.GetID())
        for view in layout.XRAY_VIEWS:
            widget = layoutManager.sliceWidget(view.tag)
            self.assertIsNotNone(widget, view.tag)
            self.assertEqual(widget.mrmlSliceCompositeNode().GetBackgroundVolumeID(), expected[view.tag], view.tag)
            self.assertEqual(widget.mrmlSliceNode().GetViewGroup(), layout.view_group(view), view.tag)
            self.assertEqual(widget.mrmlSliceCompositeNode().GetLinkedControl(), view.row == "result", view.tag)
        logic.restorePreviousLayout()
        self.assertEqual(layoutManager.layout, layout.FOUR_UP_LAYOUT)

    def test_failed_request_leaves_scene_unchanged(self) -> None:
        self.delayDisplay("Connection refused")
        import socket

        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.full((4, 8, 8), -1000, np.int16), name="input")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with self.assertRaises(ClientError) as caught:
            CTEnhanceLogic().process({"image": volume}, f"http://127.0.0.1:{port}", params={"target_spacing": 1.0})
        self.assertIn("Nothing is listening", str(caught.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_enhance_on_server(self) -> None:
        self.delayDisplay("Enhance on a server")
        import numpy as np

        url = os.environ.get("CTENHANCE_SERVER_URL", "")
        try:
            task = {t.name: t for t in Client(url or DEFAULT_SERVER_URL, CONNECT_TIMEOUTS).tasks()}[SR_TASK]
        except (ClientError, KeyError) as exc:
            if url:
                raise
            self.skipTest(f"no CT Enhance server at {DEFAULT_SERVER_URL} ({exc}); set CTENHANCE_SERVER_URL")
        volume = self._loadTestVolume()
        before = slicer.util.arrayFromVolume(volume).copy()
        spacing = float(os.environ.get("CTENHANCE_TEST_SPACING") or volume.GetSpacing()[2] / 2)
        params = task.request_params(target_spacing=spacing, model=os.environ.get("CTENHANCE_TEST_MODEL") or None)
        enhanced = CTEnhanceLogic().process({"image": volume}, url or DEFAULT_SERVER_URL, SR_TASK, params)
        self.assertEqual(enhanced.GetName(), f"{volume.GetName()} enhanced")
        expected, actual = super_resolution_grid(volumeGrid(volume), spacing), volumeGrid(enhanced)
        self.assertEqual(actual.size, expected.size)
        for name in ("spacing", "origin"):
            np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), atol=1e-3)
        np.testing.assert_allclose(actual.axes, expected.axes, atol=1e-6)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        self.assertComparison(volume, enhanced)

    def assertComparison(self, original, enhanced) -> None:
        """Six views in one group, linked, original on top and enhanced below, same window/level."""
        layoutManager = slicer.app.layoutManager()
        self.assertEqual(layoutManager.layout, layout.LAYOUT_ID)
        self.assertEqual(len(layout.VIEWS), 6)
        groups = set()
        for view in layout.VIEWS:
            widget = layoutManager.sliceWidget(view.tag)
            self.assertIsNotNone(widget, view.tag)
            sliceNode, composite = widget.mrmlSliceNode(), widget.mrmlSliceCompositeNode()
            groups.add(sliceNode.GetViewGroup())
            self.assertEqual(sliceNode.GetOrientation(), view.orientation)
            expected = original if view.row == "original" else enhanced
            self.assertEqual(composite.GetBackgroundVolumeID(), expected.GetID(), view.tag)
            self.assertTrue(composite.GetLinkedControl())
        self.assertEqual(groups, {layout.VIEW_GROUP})
        a, b = original.GetDisplayNode(), enhanced.GetDisplayNode()
        self.assertEqual((a.GetWindow(), a.GetLevel()), (b.GetWindow(), b.GetLevel()))

    @staticmethod
    def _loadTestVolume() -> vtkMRMLScalarVolumeNode:
        path = os.environ.get("CTENHANCE_TEST_VOLUME")
        if path:
            return slicer.util.loadVolume(path, {"show": False, "singleFile": True})
        import SampleData

        return SampleData.downloadSample("CTChest")
