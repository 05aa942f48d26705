"""CT Enhance: one-click enhancement of a CT by a MONAI Label server, original and result side by side.

The Slicer side stays thin: this file wires the panel; ``CTEnhanceSlicer`` holds what needs Slicer
(the client process in a ``qt.QProcess``, loading and saving volumes, the result layouts, the
self-test); everything else (HTTP, the progress protocol, the Enhance state machine, the layout's
XML and view assignment, the expected output grid, the derived series' tags) lives in the
Slicer-free ``CTEnhanceLib``.
"""
from __future__ import annotations

import logging
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from CTEnhanceLib.client import Cancelled, ClientError, server_url_warnings
from CTEnhanceLib.process import EnhanceFlow, Phase
from CTEnhanceLib.tasks import SR_TASK, TaskInfo, tasks_from_records
from CTEnhanceSlicer.logic import EnhanceLogic, EnhanceRun
from CTEnhanceSlicer.qtprocess import QtClientProcess
from CTEnhanceSlicer.selftest import CTEnhanceTest  # noqa: F401 - Slicer's Reload and Test looks it up here

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
SERVER_URL_SETTING = "CTEnhance/ServerURL"
SERVER_TOKEN_SETTING = "CTEnhance/ServerToken"
POLL_INTERVAL_MS = 200
STATUS_BAR_MESSAGE_MS = 10000


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
            "views. Connect to the server, pick the volume, click Enhance. The result is named and saved as "
            "AI-generated, beside the input in its study. A diffusion model's result comes with its uncertainty, "
            "shown as a colour overlay on the result views. The task Denoise (low dose) denoises a low-dose CT "
            "the same way. See docs/slicer.md.")
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
    """The module panel: server and token, inputs, Enhance/Cancel with progress, errors, layout, DICOM."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: CTEnhanceLogic | None = None
        self._parameterNode: CTEnhanceParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._tasks: list[TaskInfo] = []
        self._process: QtClientProcess | None = None
        self._onProcessDone = None
        self._run: EnhanceRun | None = None
        self._flow = EnhanceFlow()
        self._timer = qt.QTimer()

    def setup(self) -> None:
        """Build the panel from the .ui file, wire it, and connect to the server used last time."""
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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._onModelChanged)
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self._onUncertaintyDisplay)
        self.ui.uncertaintyOpacitySlider.connect("valueChanged(double)", self._onUncertaintyDisplay)
        self.ui.enhanceButton.connect("clicked(bool)", self.onEnhance)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.previousLayoutButton.connect("clicked(bool)", self.onPreviousLayout)
        self.ui.saveDicomButton.connect("clicked(bool)", self.onSaveDicom)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.connect("layoutChanged(int)", self._updateButtons)

        self.ui.serverTokenLineEdit.text = str(qt.QSettings().value(SERVER_TOKEN_SETTING, ""))
        self.initializeParameterNode()
        self._showError("")
        self._setBusy(False)
        self._onTaskChanged()
        if qt.QSettings().contains(SERVER_URL_SETTING):  # a server answered before: connect to it again
            qt.QTimer.singleShot(0, self.onConnect)

    def cleanup(self) -> None:
        """The panel is destroyed: stop any request, drop observers."""
        self._cancelProcess()
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
        self._cancelProcess()
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
        """Read the server's tasks (in the client process)."""
        if self._process is not None:
            return
        url = self.ui.serverUrlLineEdit.text
        self._showError("")
        try:
            self._showUrlAdvice()
            process = self.logic.startConnect(url, self._token())
        except ClientError as exc:
            self._showError(str(exc))
            return
        self.ui.serverStatusLabel.text = _("Connecting to {url}...").format(url=url)
        self._startProcess(process, self._onConnected)

    def onEnhance(self) -> None:
        """Start the selected task on the selected input(s)."""
        self._showError("")
        task, node = self._currentTask(), self._parameterNode
        if task is None or node is None or not self._flow.can_enhance(True) or self._process is not None:
            return
        inputs = ({"image": node.frontalXray, "label": node.lateralXray} if task.takes_xray_pair
                  else {"image": node.inputVolume})
        model = self.ui.modelComboBox.currentText or None
        try:
            params = task.request_params(
                target_spacing=node.targetSpacing if "target_spacing" in task.params else None,
                model=model, device=self.ui.deviceComboBox.currentText or None,
                **task.adapt_params(node.adapt and task.can_adapt, node.adaptSeconds),
                **task.sampling_params(model, self.ui.samplesSpinBox.value or None, self.ui.stepsSpinBox.value or None))
            self._run = self.logic.startEnhance(inputs, node.serverUrl, task.name, params, node.readTimeoutS,
                                                self._token())
        except (ClientError, RuntimeError, ValueError) as exc:
            self._showError(str(exc))
            return
        self._flow.start()
        self._startProcess(self._run.process, self._onEnhanced)

    def onCancel(self) -> None:
        """Stop the running request (the client process ends); the scene is left as it was."""
        if self._process is not None:
            self._flow.cancel()
            self._process.cancel()
            self.ui.stageLabel.text = _("Cancelling...")

    def onPreviousLayout(self) -> None:
        self.logic.restorePreviousLayout()

    def onSaveDicom(self) -> None:
        """Write the latest result as a derived DICOM series of its input's study."""
        result = self._parameterNode.enhancedVolume if self._parameterNode else None
        if result is None:
            return
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the DICOM series"))
        if not folder:
            return
        self._showError("")
        try:
            written = self.logic.saveAsDicom(result, folder)
        except Exception as exc:  # noqa: BLE001 - any failure is shown; the traceback goes to the log
            logging.exception("CT Enhance: saving as DICOM failed")
            self._showError(str(exc))
            return
        self._say(_("Saved {name} as a DICOM series in {folder} (and in the DICOM database).").format(
            name=result.GetName(), folder=written))

    def _onConnected(self, process: QtClientProcess) -> None:
        try:
            self._tasks = tasks_from_records(process.result().get("tasks", []))
        except (ClientError, ValueError) as exc:
            self._tasks = []
            self.ui.serverStatusLabel.text = _("Not connected.")
            self._showError(str(exc))
        else:
            settings = qt.QSettings()
            settings.setValue(SERVER_URL_SETTING, self.ui.serverUrlLineEdit.text)
            settings.setValue(SERVER_TOKEN_SETTING, self._token())
            self.ui.serverStatusLabel.text = _("Connected: {n} image task(s).").format(n=len(self._tasks))
            if not self._tasks:
                self._showError(_("This server offers no image-output task: start it with CT Enhance's app "
                                  "(monailabel start_server --app monailabel_app ...)."))
        self._fillTasks()

    def _onEnhanced(self, process: QtClientProcess) -> None:
        """The client process ended: load the result (Enhance stays disabled until it is loaded and shown)."""
        run, self._run = self._run, None
        self._flow.ended(process.exitCode == 0 and not process.run.cancelled)
        self._updateButtons()
        try:
            if self._flow.phase is Phase.LOADING:
                self._say(_("Loading the result..."))
                slicer.app.processEvents()
            enhanced = self.logic.finishEnhance(run)
            if self._parameterNode is not None:
                self._parameterNode.enhancedVolume = enhanced
            self.logic.showResult(run, enhanced)
            self._onModelChanged()
            self._say(_("Done: {name}.").format(name=enhanced.GetName()))
        except Cancelled:
            self._say(_("Cancelled; the scene is unchanged."))
        except (ClientError, RuntimeError) as exc:
            logging.info("CT Enhance: %s", exc)
            self._say(_("Failed; the scene is unchanged."))
            self._showError(str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure is shown; the traceback goes to the log
            logging.exception("CT Enhance: loading the result failed")
            self._say(_("Failed; the scene is unchanged."))
            self._showError(_("Loading the result failed ({error}); the Python console has the details.").format(
                error=exc))
        finally:
            if self._flow.phase is Phase.LOADING:
                self._flow.loaded()
            self._updateButtons()

    def _startProcess(self, process: QtClientProcess, onDone) -> None:
        self._process, self._onProcessDone = process, onDone
        self._setBusy(True)
        self._timer.start()

    def _poll(self) -> None:
        """Timer tick on the GUI thread: read the client's output, show progress, hand over a finished process."""
        process = self._process
        if process is None:
            self._timer.stop()
            return
        done = process.poll()
        progress = process.progress
        fraction = progress.fraction
        self.ui.progressBar.setRange(0, 0 if fraction is None else 100)
        self.ui.progressBar.value = 0 if fraction is None else int(round(100 * fraction))
        if not process.run.cancelled and self._onProcessDone == self._onEnhanced:
            self._say(progress.describe())
        if done:
            self._timer.stop()
            onDone, self._process, self._onProcessDone = self._onProcessDone, None, None
            self._setBusy(False)
            onDone(process)

    def _cancelProcess(self) -> None:
        if self._process is not None:
            self._flow.cancel()
            self._process.cancel()

    def _setBusy(self, busy: bool) -> None:
        self.ui.cancelButton.enabled = busy
        self.ui.connectButton.enabled = not busy
        self.ui.progressBar.visible = busy
        if not busy:
            self.ui.progressBar.setRange(0, 100)
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        """Enable Enhance only when it can run (never before the last result is loaded), and say why not."""
        node, task = self._parameterNode, self._currentTask()
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
        self.ui.enhanceButton.enabled = self._flow.can_enhance(not reason) and self._process is None
        self.ui.adaptSecondsSpinBox.enabled = bool(node and node.adapt)
        self.ui.enhanceButton.toolTip = reason or _("Send the input to the server and show the result beside it.")
        self.ui.previousLayoutButton.enabled = self.logic is not None and self.logic.comparisonShown()
        result = node.enhancedVolume if node else None
        self.ui.saveDicomButton.enabled = (self.logic is not None and not self._flow.busy
                                           and self.logic.canSaveAsDicom(result))

    def _fillTasks(self) -> None:
        combo = self.ui.taskComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for task in self._tasks:
            combo.addItem(task.label)
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
        self.ui.enhanceButton.text = task.action if task else _("Enhance")
        for combo, param in ((self.ui.modelComboBox, "model"), (self.ui.deviceComboBox, "device")):
            wasBlocked = combo.blockSignals(True)
            self._fillChoices(combo, task.choices(param) if task else (), task.default(param) if task else None)
            combo.blockSignals(wasBlocked)
        self._onModelChanged()

    def _onModelChanged(self, index: int = -1) -> None:
        """Show the sampling options (within the server's bounds) for a diffusion model, and the uncertainty
        display while such a model is chosen or the latest result has an uncertainty."""
        task = self._currentTask()
        sampled = bool(task and task.samples_model(self.ui.modelComboBox.currentText or None))
        for param, label, spinBox in (("samples", self.ui.samplesLabel, self.ui.samplesSpinBox),
                                      ("steps", self.ui.stepsLabel, self.ui.stepsSpinBox)):
            label.visible = spinBox.visible = sampled
            if sampled:
                spinBox.maximum = task.bounds(param)[1]
        result = self._parameterNode.enhancedVolume if self._parameterNode else None
        display = sampled or (self.logic is not None and self.logic.uncertaintyOf(result) is not None)
        for widget in (self.ui.showUncertaintyCheckBox, self.ui.uncertaintyOpacityLabel,
                       self.ui.uncertaintyOpacitySlider):
            widget.visible = display
        self._updateButtons()

    def _onUncertaintyDisplay(self, value=None) -> None:
        """The uncertainty toggle or opacity changed: apply it to the result shown."""
        if self.logic is not None:
            self.logic.setUncertaintyDisplay(self.ui.showUncertaintyCheckBox.checked,
                                             self.ui.uncertaintyOpacitySlider.value)

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

    def _token(self) -> str:
        return self.ui.serverTokenLineEdit.text.strip()

    def _say(self, message: str) -> None:
        """Show ``message`` under the progress bar and in Slicer's status bar."""
        self.ui.stageLabel.text = message
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:
            mainWindow.statusBar().showMessage(f"CT Enhance: {message}", STATUS_BAR_MESSAGE_MS)


class CTEnhanceLogic(EnhanceLogic):
    """The module's Logic (:class:`~CTEnhanceSlicer.logic.EnhanceLogic`) with its parameter node."""

    def getParameterNode(self) -> CTEnhanceParameterNode:
        return CTEnhanceParameterNode(super().getParameterNode())
