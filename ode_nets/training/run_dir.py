"""The run folder: `config.yaml`, `metrics.jsonl`, `checkpoints/`, `model.eqx`, `results.json`, `figures/`
(and `resumes.jsonl` when a resumed run changed its config).

`RunDir.create` refuses an existing non-empty folder unless `overwrite` (which wipes it); `RunDir.resume`
checks that a folder can be continued; `create` refuses a folder another live process trains in (`lock.hold`).
The config is written as given (a serialisable dict or YAML text):
this package knows nothing of `ode_nets.config`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from jaxtyping import PyTree

from ode_nets.errors import CheckpointError, RunDirError
from ode_nets.training import checkpoint as ckpt
from ode_nets.training.lock import LOCK_NAME, hold
from ode_nets.training.storage import append_line, complete_lines, remove_stale_temporaries, writing


def read_records(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a crash or a full disk is left out."""
    if not path.is_file():
        return []
    records = []
    for line in complete_lines(path.read_text(errors="replace")):
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class MetricsLog:
    """Append-only JSON-lines metrics; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [r for r in read_records(path) if r.get("step", 0) <= resume_step]
            ckpt.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def write(self, record: dict) -> None:
        """Append `record` (a `StorageError` naming the file if the disk is full; no half line is left)."""
        append_line(self.path, json.dumps(record))


def _flat(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _yaml_text(config: dict | str) -> str:
    return config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)


class RunDir:
    """One run folder and the paths in it. Construct with `create` (new run) or `resume` (continue one);
    `RunDir(path)` just names a folder (e.g. to read a finished run)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    model_path = property(lambda self: self.path / "model.eqx")
    results_path = property(lambda self: self.path / "results.json")
    figures = property(lambda self: self.path / "figures")
    resumes_path = property(lambda self: self.path / "resumes.jsonl")

    @classmethod
    def create(cls, path: str | Path, config: dict | str | None = None, *, overwrite: bool = False) -> "RunDir":
        """A new, empty run folder (with `config.yaml` if `config` is given). An existing non-empty folder
        is refused unless `overwrite`, which deletes it first."""
        run = cls(path)
        with writing(run.path):
            run.path.mkdir(parents=True, exist_ok=True)
        with hold(run.path):  # no other process trains here while the folder is wiped and set up
            contents = [p for p in run.path.iterdir() if p.name != LOCK_NAME]
            if contents and not overwrite:
                raise RunDirError(f"run folder {run.path} already exists; pass --overwrite to replace it or "
                                  f"--resume {run.path} to continue it")
            for item in contents:
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
            if config is not None:
                run.write_config(config)
        return run

    @classmethod
    def resume(cls, path: str | Path, *, need_config: bool = False) -> "RunDir":
        """An existing run folder to continue: it must hold `checkpoints/` or `config.yaml` (a run stopped before
        its first checkpoint starts again from step 0), and `config.yaml` if `need_config`."""
        run = cls(path)
        started = run.checkpoints.is_dir() or run.config_path.is_file()
        if not started or (need_config and not run.config_path.is_file()):
            raise RunDirError(f"cannot resume: {run.path} is not a run folder with checkpoints "
                              f"(expected {run.config_path} and {run.checkpoints}/)")
        return run

    @classmethod
    def open(cls, path: "str | Path | RunDir", config: dict | str | None = None, *, resume: bool = False,
             overwrite: bool = False) -> "RunDir":
        """A `RunDir` as given; else the folder at `path` continued (`resume`) or created with `config`."""
        if isinstance(path, RunDir):
            return path
        return cls.resume(path) if resume else cls.create(path, config, overwrite=overwrite)

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        """A run folder to read (it must hold `config.yaml`)."""
        run = cls(path)
        if not run.config_path.is_file():
            raise RunDirError(f"{run.path} is not a run folder (no config.yaml)")
        return run

    def write_config(self, config: dict | str) -> None:
        """Write `config.yaml` (atomically) from a serialisable dict or YAML text."""
        ckpt.atomic_write_bytes(self.config_path, _yaml_text(config).encode())

    def read_config(self) -> dict:
        """`config.yaml` as plain nested dicts ({} if there is none)."""
        if not self.config_path.is_file():
            return {}
        return yaml.safe_load(self.config_path.read_text()) or {}

    def record_resume(self, config: dict | str) -> dict:
        """On resume with a changed config: log what changed (and the checkpoint step it takes effect from) to
        `resumes.jsonl` and write the new `config.yaml`. Returns the changes, {key: [old, new]}."""
        new = yaml.safe_load(_yaml_text(config)) or {}  # as it reads back from config.yaml
        old, flat_new = _flat(self.read_config()), _flat(new)
        changed = {k: [old.get(k), v] for k, v in flat_new.items() if old.get(k) != v}
        if changed:
            step = self.latest_step()
            append_line(self.resumes_path, json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_step": step,
                                                       "changed": changed}))
            self.write_config(config)
        return changed

    def metrics_log(self, resume_step: int | None = None) -> MetricsLog:
        """The `metrics.jsonl` log; with `resume_step`, records after that step are dropped first."""
        return MetricsLog(self.metrics_path, resume_step)

    def read_metrics(self) -> list[dict]:
        """All records of `metrics.jsonl` (without a last line cut short by a crash)."""
        return read_records(self.metrics_path)

    def write_results(self, results: dict) -> None:
        ckpt.atomic_write_bytes(self.results_path, json.dumps(results, indent=2).encode())

    def read_results(self) -> dict:
        return json.loads(self.results_path.read_text())

    def figure(self, name: str) -> Path:
        """The path of figure `name` in `figures/` (the folder is created)."""
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / name

    def save_checkpoint(self, state: PyTree, position: ckpt.Position, keep: int) -> Path:
        return ckpt.save_checkpoint(self.checkpoints, state, position, keep)

    def list_checkpoints(self) -> list[Path]:
        return ckpt.list_checkpoints(self.checkpoints)

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint (None if there is none)."""
        found = self.list_checkpoints()
        return ckpt.checkpoint_step(found[-1]) if found else None

    def load_latest(self, like: PyTree) -> tuple[PyTree, ckpt.Position]:
        return ckpt.load_latest(self.checkpoints, like)

    def restore(self, like: PyTree) -> ckpt.Restored | None:
        """The newest intact checkpoint and the damaged ones skipped (`checkpoint.restore`), which are set aside as
        `*.damaged`; temporaries of interrupted writes are removed. None if there is no checkpoint yet; a
        `CheckpointError` if there is none but the run has finished (`model.eqx`)."""
        restored = ckpt.restore(self.checkpoints, like)
        if restored is None and self.model_path.is_file():
            raise CheckpointError(f"no checkpoint in {self.checkpoints} to resume from, and the run has "
                                  f"finished ({self.model_path} exists)")
        if restored is not None:
            ckpt.set_aside(restored.skipped)
        remove_stale_temporaries(self.checkpoints)
        remove_stale_temporaries(self.path)
        return restored

    def save_model(self, model: PyTree) -> None:
        """The final parameters, `model.eqx`."""
        ckpt.atomic_save_tree(self.model_path, model)

    def load_model(self, like: PyTree) -> Any:
        """The final parameters `model.eqx`, restored into the structure of `like`."""
        return ckpt.load_tree(self.model_path, like)
