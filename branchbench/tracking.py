"""The one place that talks to MLflow.

The default store is a SQLite file under the working directory
(``sqlite:////abs/path/mlruns.db``) with artifacts beside it in
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` or an explicit URI (a tracking
server, another database) overrides it. Everything goes through an explicit
``MlflowClient`` and run ids, never the fluent active-run stack, so a cell can
start a reference run while its own is open, and worker processes do not share
hidden state.

Tags written by branchbench are prefixed ``bb.``; the cell's config hash
(``bb.config_hash``) identifies a cell for resume and reuse.

Claims and checkpoints: a SQLite store is local to one machine, so its claims
are file locks beside it; any other store (a tracking server, a database) may
be written from many machines, so its claims are records in the store itself,
in the experiment ``branchbench.claims`` (:class:`~branchbench.locks.StoreClaim`).
Either way a claim covers the whole store, not one experiment, as checkpoints
are kept by cell hash.
Checkpoints go to ``checkpoint_dir`` when given (storage every node sees, for
a cluster), else to ``bb-checkpoints/`` beside a SQLite store (or in the
working directory for other stores). MLflow is
imported when a :class:`Tracking` is made, not when this module is, so the CLI
answers ``--help`` without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from branchbench.locks import ClaimRecord, FileLock, StoreClaim, holding, locked

# MLflow's artifact progress bars would interleave with ours on every reference load
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# with a tracking server MLflow prints two "View run" lines per ended run; the sweep prints its own line per cell
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

DEFAULT_EXPERIMENT = "branchbench"
DB_NAME = "mlruns.db"
ARTIFACT_DIR = "mlartifacts"
CHECKPOINT_DIR = "bb-checkpoints"
CLAIMS_EXPERIMENT = "branchbench.claims"
CLAIMS_NOTE = ("Claims on cells held by running branchbench sweeps (one run per claim, deleted when released); "
               "nothing to browse here.")
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https", "databricks")
# the experiment tag that makes MLflow's UI open on training runs, not GenAI traces
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description, rendered as Markdown on its page
DATA_CONTEXT_TAG = "mlflow.data.context"  # how a run used a dataset input (shown beside it)


class TrackingError(ValueError):
    """A tracking URI or store that cannot be used; the message names it and the fix."""


def default_uri(directory: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file in ``directory`` (default: cwd)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and directory is None:
        return env
    root = Path(directory or os.getcwd()).resolve()
    return f"sqlite:///{root / DB_NAME}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).resolve()
    return None


def check_uri(uri: str) -> None:
    """Refuse a URI MLflow cannot use as a store, before anything is created."""
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if scheme in DATABASE_SCHEMES + SERVER_SCHEMES:
        if scheme == "sqlite" and sqlite_path(uri) is None:
            raise TrackingError(f"tracking URI {uri!r}: a SQLite store is sqlite:///<absolute or relative file path>, "
                                "e.g. sqlite:///mlruns.db")
        return
    if scheme in ("", "file"):
        raise TrackingError(
            f"tracking URI {uri!r} is a plain folder (MLflow's file store, which MLflow 3 no longer "
            f"develops); use a SQLite file instead, e.g. --tracking-uri sqlite:///{DB_NAME}"
        )
    raise TrackingError(
        f"tracking URI {uri!r} has the unknown scheme {scheme!r}; use sqlite:///<file>, a database URI "
        f"({', '.join(DATABASE_SCHEMES[1:])}) or a tracking server (http://host:port)"
    )


def local_root(uri: str) -> Path:
    """A local folder beside the store for artifacts, checkpoints and locks."""
    path = sqlite_path(uri)
    return path.parent if path is not None else Path(os.getcwd()).resolve()


def _prepare_folder(uri: str, root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingError(
            f"tracking URI {uri!r}: cannot create the store's folder {root} ({err.strerror or err}); "
            "give --tracking-uri a location you can write"
        ) from None
    if not os.access(root, os.W_OK):
        raise TrackingError(f"tracking URI {uri!r}: the folder {root} is not writable; give --tracking-uri "
                            "a location you can write")


class Tracking:
    """A handle on one MLflow store and experiment.

    Creating a SQLite store (MLflow's schema migration) is serialised by a lock
    beside the file, so two processes started at once on a store that does not
    exist yet both succeed.
    """

    def __init__(self, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 checkpoint_dir: str | Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_uri()
        check_uri(self.uri)
        self.root = local_root(self.uri)
        _prepare_folder(self.uri, self.root)
        self.checkpoint_dir = Path(checkpoint_dir).expanduser().resolve() if checkpoint_dir is not None else None
        self.experiment_name = experiment
        self._claims_experiment: str | None = None
        db = sqlite_path(self.uri)
        try:
            if db is not None:  # MLflow creates and migrates the schema when the client first opens the file
                with locked(self.lock_root / "store-create.lock"):
                    self.client = MlflowClient(tracking_uri=self.uri)
                    self.experiment_id = self._experiment(experiment)
            else:
                self.client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = self._experiment(experiment)
        except TrackingError:
            raise
        except Exception as err:  # the database or server refused: one line, not a traceback
            raise TrackingError(f"tracking URI {self.uri!r} cannot be used: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}") from err

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise TrackingError(f"experiment {name!r} is deleted in {self.uri}; restore it in the MLflow UI "
                                    "or choose another with --experiment")
            self._ensure_kind(found)
            return found.experiment_id
        location = (self.root / ARTIFACT_DIR).as_uri() if sqlite_path(self.uri) else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _ensure_kind(self, experiment: Any) -> None:
        """Tag an experiment made before the kind tag (or by hand) as model training, once."""
        for key, value in EXPERIMENT_KIND.items():
            if key not in experiment.tags:
                self.client.set_experiment_tag(experiment.experiment_id, key, value)

    def experiment_tags(self) -> dict[str, str]:
        return dict(self.client.get_experiment(self.experiment_id).tags)

    @property
    def checkpoint_root(self) -> Path:
        """Where cells keep their checkpoints: ``checkpoint_dir`` if given, else beside the store."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.root / CHECKPOINT_DIR

    @property
    def lock_root(self) -> Path:
        """The folder of a SQLite store's file locks (beside the file, wherever checkpoints go)."""
        return self.root / CHECKPOINT_DIR

    @property
    def shared(self) -> bool:
        """Whether processes on other machines can write this store (anything but a SQLite file)."""
        return sqlite_path(self.uri) is None

    # ---------------------------------------------------------------- claims
    def claim(self, key: str, ttl: float | None = None) -> FileLock | StoreClaim:
        """A claim on ``key`` that holds wherever this store can be written from (module docstring)."""
        if not self.shared:
            return FileLock(self.lock_root / f"{key}.lock")
        return StoreClaim(self, key) if ttl is None else StoreClaim(self, key, ttl=ttl)

    def holding(self, key: str):
        """Hold the claim on ``key`` for a ``with`` block."""
        return holding(self.claim(key))

    def _claims_experiment_id(self) -> str:
        if self._claims_experiment is None:
            self._claims_experiment = self._experiment(CLAIMS_EXPERIMENT)
            self.client.set_experiment_tag(self._claims_experiment, "mlflow.note.content", CLAIMS_NOTE)
        return self._claims_experiment

    def add_claim(self, key: str, owner: Mapping[str, Any]) -> str:
        tags = {"bb.kind": "claim", "bb.claim.key": key, "bb.claim.owner": json.dumps(owner, sort_keys=True),
                "bb.claim.heartbeat": repr(time.time())}
        return self.client.create_run(self._claims_experiment_id(), tags=tags, run_name=f"claim-{key}").info.run_id

    def list_claims(self, key: str) -> list[ClaimRecord]:
        """The active claims on ``key`` (removed ones are deleted runs, which searches leave out)."""
        found = self.client.search_runs([self._claims_experiment_id()], f"tags.`bb.claim.key` = '{key}'",
                                         max_results=1000)
        out = []
        for run in found:
            tags = run.data.tags
            try:
                out.append(ClaimRecord(run.info.run_id, json.loads(tags["bb.claim.owner"]),
                                       float(tags["bb.claim.heartbeat"])))
            except (KeyError, ValueError):  # a claim caught between create and its tags: count it as live
                out.append(ClaimRecord(run.info.run_id, {}, time.time()))
        return out

    def beat_claim(self, claim_id: str) -> bool:
        """Refresh a claim's heartbeat; False when it was removed (someone judged it dead)."""
        if self.client.get_run(claim_id).info.lifecycle_stage != "active":
            return False
        self.client.set_tag(claim_id, "bb.claim.heartbeat", repr(time.time()))
        return True

    def drop_claim(self, claim_id: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # removed already, by its owner or by another contender
            self.client.delete_run(claim_id)

    @property
    def label(self) -> str:
        """The store as a report may name it: no absolute path of this machine."""
        db = sqlite_path(self.uri)
        return db.name if db is not None else self.uri

    # ------------------------------------------------------------------ runs
    def start_run(self, name: str, tags: Mapping[str, str], parent_id: str | None = None) -> str:
        all_tags = {k: _tag_value(v) for k, v in tags.items()}
        if parent_id is not None:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def reopen_run(self, run_id: str) -> None:
        """Set an interrupted run back to RUNNING so its record continues where it stopped."""
        self.client.update_run(run_id, status="RUNNING")
        if "bb.failure" in self.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, "bb.failure")

    def end_run(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason is not None:
            self.client.set_tag(run_id, "bb.failure", reason[:5000])
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, _tag_value(v)) for k, v in tags.items()])

    def set_description(self, run_id: str, text: str) -> None:
        """The run's description (Markdown), shown on its page in the MLflow UI."""
        self.set_tags(run_id, {DESCRIPTION_TAG: text})

    def log_dataset(self, run_id: str, name: str, digest: str, source: Mapping[str, Any],
                    profile: Mapping[str, Any], context: str) -> None:
        """Record the run's data as an MLflow dataset input (the UI's Dataset column and drawer).

        The same dataset input logged again (a resumed run) is recorded once.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="branchbench",
                          source=json.dumps(source, sort_keys=True, default=_json_default),
                          profile=json.dumps(profile, default=_json_default))
        if any(item.dataset.name == name and item.dataset.digest == digest
               for item in self.get_run(run_id).inputs.dataset_inputs):
            return
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(DATA_CONTEXT_TAG, context)])])

    def set_experiment_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_experiment_tag(self.experiment_id, key, _tag_value(value))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    # ------------------------------------------------------------- artifacts
    def log_object(self, run_id: str, name: str, obj: Any) -> None:
        """Log a figure (.png), a DataFrame (.csv), text, or JSON-able data under ``name``."""
        import pandas as pd
        from matplotlib.figure import Figure

        if isinstance(obj, Figure):
            self.client.log_figure(run_id, obj, name)
            import matplotlib.pyplot as plt

            plt.close(obj)
        elif isinstance(obj, pd.DataFrame):
            self.client.log_text(run_id, obj.to_csv(index=True), name)
        elif isinstance(obj, str):
            self.client.log_text(run_id, obj, name)
        else:
            self.client.log_text(run_id, json.dumps(obj, indent=1, default=_json_default), name)

    def log_file(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_dir)

    def log_state_dict(self, run_id: str, state: Mapping[str, Any], name: str = "model/weights.pt") -> None:
        import torch

        folder, _, filename = name.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            torch.save({k: v.detach().cpu() for k, v in state.items()}, path)
            self.client.log_artifact(run_id, str(path), folder or None)

    def load_state_dict(self, run_id: str, name: str = "model/weights.pt") -> dict[str, Any]:
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            return torch.load(self._download(run_id, name, tmp), map_location="cpu", weights_only=True)

    def load_text(self, run_id: str, name: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self._download(run_id, name, tmp)).read_text()

    def load_json(self, run_id: str, name: str) -> Any:
        return json.loads(self.load_text(run_id, name))

    def artifact_names(self, run_id: str, path: str | None = None) -> list[str]:
        moved = self._moved_artifacts(run_id)
        if moved is not None:
            folder = moved / path if path else moved
            if not folder.is_dir():
                return []
            return sorted(f"{path}/{p.name}" if path else p.name for p in folder.iterdir())
        return [item.path for item in self.client.list_artifacts(run_id, path)]

    def _download(self, run_id: str, name: str, tmp: str) -> str:
        moved = self._moved_artifacts(run_id)
        if moved is not None:
            return str(moved / name)
        return self.client.download_artifacts(run_id, name, tmp)

    def _moved_artifacts(self, run_id: str) -> Path | None:
        """A copied or moved SQLite store's artifacts: the run's recorded folder is gone, the copy's is here.

        A local store records absolute artifact paths; when the store folder
        was copied elsewhere, a run's artifacts are read from the same place
        under this store's own ``mlartifacts/``, so a copy of the folder is a
        complete record.
        """
        if sqlite_path(self.uri) is None:
            return None
        uri = self.get_run(run_id).info.artifact_uri or ""
        if not uri.startswith("file:"):
            return None
        recorded = Path(urlparse(uri).path)
        if recorded.exists() or f"/{ARTIFACT_DIR}/" not in recorded.as_posix():
            return None
        tail = recorded.as_posix().split(f"/{ARTIFACT_DIR}/", 1)[1]
        here = self.root / ARTIFACT_DIR / tail
        return here if here.exists() else None

    # --------------------------------------------------------------- queries
    def search(self, filter_string: str = "", max_results: int = 50_000):
        """Runs of this experiment as a pandas frame (``mlflow.search_runs`` columns)."""
        import mlflow

        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            return mlflow.search_runs(
                experiment_ids=[self.experiment_id], filter_string=filter_string, max_results=max_results
            )
        finally:
            mlflow.set_tracking_uri(previous)

    def runs(self, filter_string: str) -> list:
        """Matching runs (``mlflow.entities.Run``), newest first."""
        out, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=1000, page_token=token,
                order_by=["attributes.start_time DESC"],
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def finished_run(self, config_hash: str):
        """The FINISHED run of a cell, or None."""
        found = self.runs(f"tags.`bb.config_hash` = '{config_hash}' and attributes.status = 'FINISHED'")
        return found[0] if found else None

    def runs_of_cell(self, config_hash: str, statuses: Iterable[str] | None = None) -> list:
        runs = self.runs(f"tags.`bb.config_hash` = '{config_hash}'")
        if statuses is not None:
            keep = set(statuses)
            runs = [r for r in runs if r.info.status in keep]
        return runs

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)


def _tag_value(value: Any) -> str:
    return str(value)[:MAX_TAG_CHARS]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=_json_default)
    return text[:MAX_PARAM_CHARS]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
