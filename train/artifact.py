"""Model artifacts: a joblib file holding metadata (checked first) and the pickled model.

Metadata: format version, schema version, feature list, training-data fingerprint, library versions, metrics.
A corrupted file, or one made by an incompatible version, fails with one clear InputError line.
"""

from __future__ import annotations

import hashlib
import pickle
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import InputError
from features.schema import COLUMNS, SCHEMA_VERSION

ARTIFACT_FORMAT = "layoutcast-model"
ARTIFACT_VERSION = 1
LIBRARIES = ("layoutcast", "numpy", "pandas", "scikit-learn", "xgboost", "optuna", "torch")
# families whose pickles depend on the exact scikit-learn release
SKLEARN_FAMILIES = ("residual-rf", "residual-knn")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries an artifact depends on (None where not installed)."""
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            out[lib] = None
    return out


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A stable 64-bit hash of each row's schema columns (same values, same hash, in any process)."""
    cols = [c for c in COLUMNS if c in frame.columns]
    text = frame[cols].astype("string").fillna("\x00")
    return pd.util.hash_pandas_object(text, index=False).to_numpy(np.uint64)


def canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` sorted by row hash: any permutation of the same rows trains the same model."""
    return frame.iloc[np.argsort(row_hashes(frame), kind="stable")]


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over the schema columns of every row, independent of row order: which data a model saw."""
    if not len(frame):
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(np.sort(row_hashes(frame)).tobytes()).hexdigest()


def features_version() -> int | None:
    """Version of the physics feature frame (features.frame.FRAME_VERSION), where it declares one."""
    try:
        from features import frame as features_frame
    except ImportError:
        return None
    return getattr(features_frame, "FRAME_VERSION", None)


def artifact_metadata(model, frame: pd.DataFrame | None = None, metrics: dict | None = None, **extra) -> dict:
    """Everything an artifact records about how its model was made."""
    meta = {
        "format": ARTIFACT_FORMAT,
        "artifact_version": ARTIFACT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "features_version": features_version(),
        "family": model.family,
        "hyperparameters": model.get_params(),
        "features": model.feature_names,
        "targets": sorted(model.learners_) or sorted(model.calibration_),
        "versions": library_versions(),
        "metrics": metrics or {},
    }
    if frame is not None:
        meta["data_fingerprint"] = data_fingerprint(frame)
        meta["n_rows"] = int(len(frame))
        meta["physics_reference"] = physics_reference(frame)
    meta.update(extra)
    return meta


def save_artifact(model, path: str | Path, metadata: dict | None = None) -> dict:
    """Write `model` with its metadata to `path` (joblib, compressed); returns the metadata written."""
    import joblib

    base = artifact_metadata(model)
    meta = {**base, **(metadata or {})}
    for key in ("format", "artifact_version", "schema_version", "features_version", "family"):
        meta[key] = base[key]  # what compatibility checks read always describes this installation
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    joblib.dump({"meta": meta, "model": blob}, tmp, compress=("zlib", 6))
    tmp.replace(path)
    return meta


def _read(path: str | Path) -> dict:
    import joblib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model artifact {str(path)!r} does not exist")
    try:
        payload = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a damaged or foreign file
        raise InputError(f"model artifact {str(path)!r} is corrupted or not a layoutcast model ({type(e).__name__})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict) or "model" not in payload \
            or payload["meta"].get("format") != ARTIFACT_FORMAT:
        raise InputError(f"model artifact {str(path)!r} is not a layoutcast model artifact")
    return payload


def check_compatible(meta: dict, path: str | Path = "artifact") -> None:
    """Raise InputError naming the first incompatibility between an artifact and this installation."""
    retrain = "retrain it with `layoutcast train`"
    if meta.get("artifact_version") != ARTIFACT_VERSION:
        raise InputError(f"model artifact {str(path)!r} has format version {meta.get('artifact_version')}, this "
                         f"layoutcast reads version {ARTIFACT_VERSION}; {retrain}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"model artifact {str(path)!r} was trained on measurement schema {meta.get('schema_version')}, "
                         f"this layoutcast uses schema {SCHEMA_VERSION}; {retrain}")
    mine = features_version()
    if meta.get("features_version") != mine:
        raise InputError(f"model artifact {str(path)!r} was trained on physics features version "
                         f"{meta.get('features_version')}, this layoutcast computes version {mine}; {retrain}")
    if meta.get("family") in SKLEARN_FAMILIES:
        made, have = (meta.get("versions") or {}).get("scikit-learn"), library_versions()["scikit-learn"]
        if made != have:
            raise InputError(f"model artifact {str(path)!r} needs scikit-learn {made}, installed is {have}; {retrain}")


def physics_reference(frame: pd.DataFrame, per_group: int = 2) -> dict:
    """A few training rows (per kind and source) with their physics answers, so a loader can tell whether the
    physics model changed since training: learned corrections of another physics model would be wrong."""
    if not len(frame) or "kind" not in frame.columns:
        return {"rows": [], "phys": {}}
    keys = [c for c in ("kind", "source") if c in frame.columns]
    picked = frame.groupby(keys, sort=True, dropna=False).head(per_group)
    schema_cols = [c for c in COLUMNS if c in picked.columns]
    rows = [{k: _plain(v) for k, v in r.items() if not _missing(v)} for r in picked[schema_cols].to_dict("records")]
    phys = {c: [None if _missing(v) else float(v) for v in picked[c]] for c in picked.columns if c.startswith("phys_")}
    return {"rows": rows, "phys": phys}


def _missing(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def check_physics(meta: dict, path: str | Path = "artifact", rtol: float = 1e-6) -> None:
    """Raise InputError when today's physics answers differ from those the artifact's model was trained on."""
    ref = meta.get("physics_reference") or {}
    if not ref.get("rows"):
        return
    from features.frame import physics_frame

    try:
        now = physics_frame(pd.DataFrame(ref["rows"]))
    except InputError as e:
        raise InputError(f"model artifact {str(path)!r} refers to rows this layoutcast cannot frame ({e}); "
                         "retrain it with `layoutcast train`") from None
    for col, old in ref["phys"].items():
        new = now[col].to_numpy(dtype=float, na_value=np.nan) if col in now.columns else np.full(len(old), np.nan)
        old = np.array([np.nan if v is None else v for v in old], dtype=float)
        same = np.isclose(new, old, rtol=rtol, atol=0.0, equal_nan=True)
        if not same.all():
            raise InputError(f"model artifact {str(path)!r} was trained on another version of the physics model "
                             f"({col} changed on {int((~same).sum())} of {len(same)} reference rows); retrain it with "
                             "`layoutcast train` (the bundled default: scripts/build_default_model.py)")


def read_metadata(path: str | Path) -> dict:
    """The metadata of an artifact, without loading its model."""
    return _read(path)["meta"]


def load_artifact(path: str | Path, check_physics_model: bool = True):
    """The model stored at `path`, after checking it is intact and compatible with this installation
    (formats, versions and, unless `check_physics_model` is False, the physics answers it was trained on)."""
    payload = _read(path)
    check_compatible(payload["meta"], path)
    if check_physics_model:
        check_physics(payload["meta"], path)
    try:
        model = pickle.loads(payload["model"])
    except Exception as e:  # noqa: BLE001
        raise InputError(f"model artifact {str(path)!r} is corrupted or incompatible ({type(e).__name__}: {e}); "
                         "retrain it with `layoutcast train`") from None
    if not callable(getattr(model, "predict_arrays", None)):
        raise InputError(f"model artifact {str(path)!r} holds a {type(model).__name__}, not a layoutcast model")
    model.metadata_ = payload["meta"]
    return model
