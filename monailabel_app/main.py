"""CT Enhance's MONAI Label app: image-to-image infer tasks over ``ctsr_models``.

Start it with ``monailabel start_server --app monailabel_app --studies DIR [--conf KEY VALUE ...]``
(``docs/server.md``). Settings (``--conf``):
    * ``models``: ``all`` (default) or a comma-separated list of task names from ``lib/infers``.
    * ``max_output_voxels``: refuse larger outputs with HTTP 413 (default 2,000,000,000).
    * ``log_file_names``: ``true`` keeps MONAI Label's INFO lines that carry file names and request
      contents (default ``false``: they may name patients).
    * ``store_results``: ``true`` stores every result in the PACS (``--studies http://.../dicom-web``) as a
      derived series of its source's study, as the request parameter ``store: true`` does (:mod:`lib.pacs`).
    * ``datastore_writable``, ``cors_origins``, ``api_token_file``, ``max_upload_bytes``,
      ``max_form_parts``: the server's security settings (:class:`lib.security.SecurityConfig`).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask

import ctsr_models
from ctsr_models.inference.enhance import MAX_OUTPUT_VOXELS
from lib.errors import NotFoundError, to_http  # ``lib`` is this app's folder (MONAI Label puts the app on the path)
from lib.infers import TASKS
from lib.pacs import image_uri, pacs_target, serve_dicom_folders
from lib.security import SecurityConfig
from lib.server import Activity, install, quiet_monailabel_logs, remember_result

log = logging.getLogger(__name__)

CONF_DEFAULTS = {"models": "all", "max_output_voxels": str(MAX_OUTPUT_VOXELS), "log_file_names": "false",
                 "datastore_writable": "false", "cors_origins": "", "api_token_file": "",
                 "max_upload_bytes": str(SecurityConfig.max_upload_bytes),
                 "max_form_parts": str(SecurityConfig.max_form_parts), "store_results": "false"}


class CTEnhanceApp(MONAILabelApp):
    """Serves the tasks of ``lib/infers``; never writes into the datastore."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.ctsr_conf = {**CONF_DEFAULTS, **(conf or {})}
        security = SecurityConfig.from_conf(self.ctsr_conf)  # a bad setting stops the start-up here
        if self.ctsr_conf["log_file_names"].lower() != "true":
            quiet_monailabel_logs()
        self.activity = Activity()
        self.pacs = pacs_target(studies, self.ctsr_conf)  # a bad store_results stops the start-up here
        serve_dicom_folders(studies)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="CT Enhance",
                         description="CT super-resolution (thick slices to thin) as MONAI Label infer tasks",
                         version=ctsr_models.__version__)
        self.off_event_loop = install(self.health, security)

    def init_infers(self) -> dict[str, InferTask]:
        """The tasks named by ``--conf models`` (all by default).

        Raises:
            ValueError: an unknown task name (the server does not start).
        """
        wanted = self.ctsr_conf["models"]
        names = list(TASKS) if wanted.strip().lower() == "all" else [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = [n for n in names if n not in TASKS]
        if unknown or not names:
            raise ValueError(f"--conf models {wanted!r}: unknown task(s) {unknown}; available: {', '.join(TASKS)}")
        tasks = {name: TASKS[name](self.ctsr_conf) for name in names}
        for task in tasks.values():
            task.pacs = self.pacs
        return tasks

    def _download_dcmqi_tools(self) -> None:
        """Nothing to fetch: MONAI Label downloads dcmqi (DICOM SEG) when it opens a DICOMweb datastore, from
        the internet, and fails offline; this app never writes DICOM SEG (results are CT series, :mod:`lib.pacs`)."""
        log.debug("dcmqi not needed: this app writes no DICOM SEG")

    def init_strategies(self) -> dict[str, Any]:
        """No active learning: this app labels nothing."""
        return {}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Resolve a datastore id (404 when unknown), never save the result as a label, count activity."""
        request = dict(request, save_label=False)
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            uri = image_uri(datastore or self.datastore(), image)
            if not uri:
                missing = NotFoundError(f"image {image!r} is not in the datastore; GET /datastore/ lists the images, "
                                        "or upload a file as the form field 'file'")
                raise to_http(missing, request.get("model", ""))
            request["image"] = uri
        with self.activity:
            result = super().infer(request, datastore)
        remember_result(result.get("params") or {})
        return result

    def batch_infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Refused: batch inference would store CT results as labels of the datastore's images."""
        raise MONAILabelException(MONAILabelError.INVALID_INPUT, "CT Enhance offers no batch inference")

    def health(self) -> dict[str, Any]:
        """The ``/health`` answer: liveness and load, nothing about patients."""
        return {"status": "ok", "name": self.name, "version": self.version, "tasks": sorted(self._infers),
                "inferences_running": self.activity.running, "inferences_served": self.activity.served,
                "infer_off_event_loop": self.off_event_loop}
