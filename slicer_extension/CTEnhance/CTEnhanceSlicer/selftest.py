"""The module's self-test (Reload and Test), self-contained: it starts its own stand-in server.

``CTEnhanceTest`` (imported into ``CTEnhance.py``, where Slicer looks for it) checks the result
layouts, that a failed request leaves the scene alone, and the real click path of the panel
against :mod:`CTEnhanceLib.stubserver` run as a child process: Connect → Enhance (Enhance
disabled while it runs) → the result loaded as ``<input> enhanced (AI-generated)`` on the
predicted grid, under the input's study → the comparison layout (each row its own view group,
slice intersections on) → Enhance enabled again; then the stub's diffusion model (Samples and Steps
shown; the result and its uncertainty loaded, the uncertainty over the result views only, with the
AI-generated line; the toggle takes it off) and the Denoise (low dose) task (``<input> (AI-denoised,
AI-generated)`` on the input's grid, same layout and overlay). No real server is needed; when one
answers at ``CTENHANCE_SERVER_URL`` it is used too (see docs/slicer.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from CTEnhanceLib import layout, overlay
from CTEnhanceLib.client import Client, ClientError, Timeouts
from CTEnhanceLib.geometry import super_resolution_grid
from CTEnhanceLib.process import client_environment, python_executable
from CTEnhanceLib.tasks import DENOISE_TASK, SR_TASK
from CTEnhanceSlicer import uncertainty
from CTEnhanceSlicer.logic import EnhanceLogic
from CTEnhanceSlicer.scene import RESULT_ATTRIBUTE, volumeGrid

WAIT_S = 60.0
STUB_DIFFUSION = {SR_TASK: "stub_diffusion", DENOISE_TASK: "stub_denoise_diffusion"}
"""The stub server's diffusion model of each task (``CTEnhanceLib.stubserver``)."""
SETTINGS = ("CTEnhance/ServerURL", "CTEnhance/ServerToken")
"""The module's remembered settings (``CTEnhance.py``), restored after the click-path test."""


class CTEnhanceTest(ScriptedLoadableModuleTest):
    """Inside Slicer: layouts, a refused connection, the click path against the stub, a real server if any."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for test in (self.test_comparison_layout, self.test_xray_layout,
                     self.test_failed_request_leaves_scene_unchanged, self.test_click_path_with_stub_server,
                     self.test_enhance_on_server):
            self.setUp()
            test()

    def test_comparison_layout(self) -> None:
        self.delayDisplay("Comparison layout")
        original, enhanced = self._volume("thick", (8, 16, 16), 4.0), self._volume("thick enhanced", (32, 16, 16), 1.0)
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(layout.FOUR_UP_LAYOUT)
        logic = EnhanceLogic()
        logic.showComparison(original, enhanced)
        self.assertComparison(original, enhanced)
        self.assertRowsStayApart(original, enhanced)
        logic.restorePreviousLayout()
        self.assertEqual(layoutManager.layout, layout.FOUR_UP_LAYOUT)

    def test_xray_layout(self) -> None:
        self.delayDisplay("X-ray to CT layout")
        frontal, lateral = self._volume("chest PA", (1, 64, 64), 1.0), self._volume("chest lateral", (1, 64, 64), 1.0)
        estimate = self._volume("chest PA CT estimate", (32, 32, 32), 1.0)
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(layout.FOUR_UP_LAYOUT)
        logic = EnhanceLogic()
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

        volume = self._volume("input", (4, 8, 8), 1.0)
        before = slicer.mrmlScene.GetNumberOfNodes()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with self.assertRaises(ClientError) as caught:
            EnhanceLogic().process({"image": volume}, f"http://127.0.0.1:{port}", params={"target_spacing": 1.0})
        self.assertIn("Nothing is listening", str(caught.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_click_path_with_stub_server(self) -> None:
        self.delayDisplay("Connect, Enhance, result, layout (stub server)")
        import qt

        settings = qt.QSettings()
        saved = {key: settings.value(key) for key in SETTINGS if settings.contains(key)}
        stub = subprocess.Popen([python_executable(), "-m", "CTEnhanceLib.stubserver"], stdout=subprocess.PIPE,
                                env=client_environment(), text=True)
        try:
            url = json.loads(stub.stdout.readline())["url"]
            self._clickThrough(url)
        finally:
            stub.kill()
            stub.wait(timeout=30)
            for key in SETTINGS:  # the stub's URL must not become the server connected to at the next start
                if key in saved:
                    settings.setValue(key, saved[key])
                else:
                    settings.remove(key)

    def _clickThrough(self, url: str) -> None:
        volume = self._volume("thick chest", (6, 20, 24), 5.0)
        self._putUnderStudy(volume)
        slicer.util.selectModule("CTEnhance")
        widget = slicer.modules.ctenhance.widgetRepresentation().self()
        self._waitUntil(lambda: widget._process is None, "Connecting to the remembered server")
        widget.ui.serverUrlLineEdit.text = url
        widget.ui.connectButton.click()
        self._waitUntil(lambda: widget._process is None, "Connect")
        self.assertEqual(widget._currentTask().name, SR_TASK, widget.ui.errorLabel.text)
        node = widget._parameterNode
        node.serverUrl, node.inputVolume, node.targetSpacing = url, volume, 1.0
        self.assertTrue(widget.ui.enhanceButton.enabled, widget.ui.enhanceButton.toolTip)
        widget.ui.enhanceButton.click()
        self.assertFalse(widget.ui.enhanceButton.enabled, "Enhance must be disabled while a request runs")
        self._waitUntil(lambda: widget._process is None and not widget._flow.busy, "Enhance")
        self.assertEqual(widget.ui.errorLabel.text, "")
        enhanced = node.enhancedVolume
        self.assertIsNotNone(enhanced)
        self.assertEqual(enhanced.GetName(), layout.result_name(volume.GetName()))
        self.assertIn(layout.AI_LABEL, enhanced.GetName())
        self.assertGrid(volume, enhanced, 1.0)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(enhanced)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volume)))
        self.assertComparison(volume, enhanced)
        self.assertTrue(widget.ui.enhanceButton.enabled, "Enhance must be enabled once the result is shown")
        self._clickDiffusion(widget, volume, SR_TASK)
        self._clickDiffusion(widget, volume, DENOISE_TASK)

    def _clickDiffusion(self, widget, volume, task: str) -> None:
        """Pick ``task`` and its stub diffusion model: Samples and Steps appear; the run loads the result and its
        uncertainty beside the input, overlaid on the result views only; the toggle takes the overlay off."""
        widget.ui.taskComboBox.currentIndex = [t.name for t in widget._tasks].index(task)
        self.assertEqual(widget.ui.enhanceButton.text, widget._currentTask().action)
        models = [widget.ui.modelComboBox.itemText(i) for i in range(widget.ui.modelComboBox.count)]
        widget.ui.modelComboBox.currentIndex = models.index(STUB_DIFFUSION[task])
        self.assertFalse(widget.ui.samplesSpinBox.isHidden(), "Samples must be offered for a diffusion model")
        self.assertEqual(widget.ui.samplesSpinBox.maximum, 16)
        widget.ui.samplesSpinBox.value, widget.ui.stepsSpinBox.value = 2, 1
        widget.ui.showUncertaintyCheckBox.checked = True
        widget.ui.enhanceButton.click()
        self._waitUntil(lambda: widget._process is None and not widget._flow.busy, task)
        self.assertEqual(widget.ui.errorLabel.text, "")
        result = widget._parameterNode.enhancedVolume
        details = json.loads(result.GetAttribute(RESULT_ATTRIBUTE))
        self.assertEqual(details["diffusion"], {"samples": 2, "steps": 1})
        denoised = task == DENOISE_TASK
        self.assertEqual(result.GetName(), layout.result_name(volume.GetName(), denoised=denoised, ai_generated=True))
        if denoised:
            self.assertSameGrid(volume, result)
        else:
            self.assertGrid(volume, result, 1.0)
        shown = uncertainty.uncertaintyOf(result)
        self.assertIsNotNone(shown, "the uncertainty must be loaded with a diffusion result")
        self.assertEqual(shown.GetName(), overlay.uncertainty_name(volume.GetName()))
        self.assertSameGrid(result, shown)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(shown)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volume)))
        self.assertComparison(volume, result)
        self.assertOverlay(result, shown, True, widget.ui.uncertaintyOpacitySlider.value)
        widget.ui.showUncertaintyCheckBox.checked = False
        self.assertOverlay(result, shown, False, 0.0)
        widget.ui.showUncertaintyCheckBox.checked = True
        widget.ui.uncertaintyOpacitySlider.value = 0.7
        self.assertOverlay(result, shown, True, 0.7)

    def assertOverlay(self, result, shown, visible: bool, opacity: float) -> None:
        """The uncertainty is the foreground of the result views only (when ``visible``), at ``opacity``, with
        the AI-generated line on the result views."""
        layoutManager = slicer.app.layoutManager()
        plan = overlay.overlay_plan(result.GetID(), shown.GetID(), visible)
        for view in layout.VIEWS:
            composite = layoutManager.sliceWidget(view.tag).mrmlSliceCompositeNode()
            self.assertEqual(composite.GetForegroundVolumeID(), plan[view.tag], view.tag)
            if plan[view.tag]:
                self.assertAlmostEqual(composite.GetForegroundOpacity(), opacity, places=3)
            if view.row in overlay.RESULT_ROWS:
                self.assertEqual(uncertainty.bannerText(view.tag),
                                 overlay.BANNER_SHOWN if visible else overlay.BANNER_HIDDEN)

    def test_enhance_on_server(self) -> None:
        """A real server, when ``CTENHANCE_SERVER_URL`` names one (skipped otherwise)."""
        url = os.environ.get("CTENHANCE_SERVER_URL", "")
        if not url:
            self.delayDisplay("No CTENHANCE_SERVER_URL: the real-server case is skipped")
            return
        self.delayDisplay("Enhance on a server")
        import numpy as np

        task = {t.name: t for t in Client(url, Timeouts(connect=5.0, read=30.0)).tasks()}[SR_TASK]
        volume = self._loadTestVolume()
        before = slicer.util.arrayFromVolume(volume).copy()
        spacing = float(os.environ.get("CTENHANCE_TEST_SPACING") or volume.GetSpacing()[2] / 2)
        params = task.request_params(target_spacing=spacing, model=os.environ.get("CTENHANCE_TEST_MODEL") or None)
        enhanced = EnhanceLogic().process({"image": volume}, url, SR_TASK, params)
        self.assertEqual(enhanced.GetName(), layout.result_name(volume.GetName()))
        self.assertGrid(volume, enhanced, spacing)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        self.assertComparison(volume, enhanced)

    def assertGrid(self, volume, enhanced, spacing: float) -> None:
        import numpy as np

        expected, actual = super_resolution_grid(volumeGrid(volume), spacing), volumeGrid(enhanced)
        self.assertEqual(actual.size, expected.size)
        for name in ("spacing", "origin"):
            np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), atol=1e-3)
        np.testing.assert_allclose(actual.axes, expected.axes, atol=1e-6)

    def assertSameGrid(self, reference, volume) -> None:
        import numpy as np

        expected, actual = volumeGrid(reference), volumeGrid(volume)
        self.assertEqual(actual.size, expected.size)
        for name in ("spacing", "origin", "axes"):
            np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), atol=1e-4)

    def assertComparison(self, original, enhanced) -> None:
        """Six linked views, each row its own view group, original on top, enhanced below, same
        window/level, slice intersections shown."""
        layoutManager = slicer.app.layoutManager()
        self.assertEqual(layoutManager.layout, layout.LAYOUT_ID)
        for view in layout.VIEWS:
            widget = layoutManager.sliceWidget(view.tag)
            self.assertIsNotNone(widget, view.tag)
            sliceNode, composite = widget.mrmlSliceNode(), widget.mrmlSliceCompositeNode()
            self.assertEqual(sliceNode.GetViewGroup(), layout.view_group(view), view.tag)
            self.assertEqual(sliceNode.GetOrientation(), view.orientation)
            expected = original if view.row == "original" else enhanced
            self.assertEqual(composite.GetBackgroundVolumeID(), expected.GetID(), view.tag)
            self.assertTrue(composite.GetLinkedControl())
        a, b = original.GetDisplayNode(), enhanced.GetDisplayNode()
        self.assertEqual((a.GetWindow(), a.GetLevel()), (b.GetWindow(), b.GetLevel()))
        appLogic = slicer.app.applicationLogic()
        visibility = slicer.vtkMRMLApplicationLogic.IntersectingSlicesVisibility
        self.assertTrue(appLogic.GetIntersectingSlicesEnabled(visibility))

    def assertRowsStayApart(self, original, enhanced) -> None:
        """A volume picked in one bottom view (a linked change, as from its controller) changes only the bottom
        row; moving a top view moves its twin below."""
        layoutManager = slicer.app.layoutManager()
        bottom = next(v for v in layout.VIEWS if v.row == "enhanced" and v.orientation == "Axial")
        composite = layoutManager.sliceWidget(bottom.tag).mrmlSliceCompositeNode()
        composite.SetInteractionFlags(slicer.vtkMRMLSliceCompositeNode.BackgroundVolumeFlag)
        composite.SetInteracting(1)
        composite.SetBackgroundVolumeID(original.GetID())
        composite.SetInteracting(0)
        for view in layout.VIEWS:
            if view.row == "original":
                background = layoutManager.sliceWidget(view.tag).mrmlSliceCompositeNode().GetBackgroundVolumeID()
                self.assertEqual(background, original.GetID(), view.tag)
        composite.SetBackgroundVolumeID(enhanced.GetID())
        top = layout.twin_view(bottom)
        topNode = layoutManager.sliceWidget(top.tag).mrmlSliceNode()
        topNode.SetSliceOffset(topNode.GetSliceOffset() + 3.0)
        bottomNode = layoutManager.sliceWidget(bottom.tag).mrmlSliceNode()
        self.assertAlmostEqual(bottomNode.GetSliceOffset(), topNode.GetSliceOffset(), places=3)

    def _waitUntil(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            self.assertLess(time.monotonic(), deadline, f"{what} did not finish within {WAIT_S:g} s")
            slicer.app.processEvents()
            time.sleep(0.02)

    @staticmethod
    def _volume(name: str, shape: tuple[int, int, int], sliceSpacing: float) -> vtkMRMLScalarVolumeNode:
        import numpy as np

        array = (np.arange(np.prod(shape)).reshape(shape) % 2000 - 1000).astype(np.int16)
        node = slicer.util.addVolumeFromArray(array, name=name)
        node.SetSpacing(0.8, 0.8, sliceSpacing)
        node.CreateDefaultDisplayNodes()
        return node

    @staticmethod
    def _putUnderStudy(node) -> None:
        """Place ``node`` under a patient and a study in the subject hierarchy, as a DICOM load would."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Test patient")
        study = shNode.CreateStudyItem(patient, "Test study")
        shNode.SetItemParent(shNode.GetItemByDataNode(node), study)

    @staticmethod
    def _loadTestVolume() -> vtkMRMLScalarVolumeNode:
        path = os.environ.get("CTENHANCE_TEST_VOLUME")
        if path:
            return slicer.util.loadVolume(path, {"show": False, "singleFile": True})
        import SampleData

        return SampleData.downloadSample("CTChest")
