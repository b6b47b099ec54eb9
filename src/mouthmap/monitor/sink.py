"""Where sampled request features go, and how a window of them is read back.

A sink appends one JSON object per sampled request to JSON-lines files: on local disk
(``/var/log/mouthmap/drift`` or any directory) or in S3 (``s3://bucket/prefix``), one object
per flush, keyed by date and hour so a window of the last hour lists a handful of keys. The
serving path calls :func:`record_request` once per request; it never raises (monitoring must
not break serving) and costs a few milliseconds.

Environment (for servers that cannot take arguments, e.g. a Triton Python backend):
``MOUTHMAP_DRIFT_SINK`` (directory or ``s3://`` URI; unset: nothing is recorded),
``MOUTHMAP_DRIFT_SAMPLE`` (share of requests recorded, default 1.0),
``MOUTHMAP_DRIFT_FLUSH`` (records buffered before an S3 upload, default 50).
"""

from __future__ import annotations

import atexit
import datetime as dt
import io
import json
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mouthmap.monitor.features import clean_record, request_features

log = logging.getLogger(__name__)

ENV_SINK = "MOUTHMAP_DRIFT_SINK"
ENV_SAMPLE = "MOUTHMAP_DRIFT_SAMPLE"
ENV_FLUSH = "MOUTHMAP_DRIFT_FLUSH"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: an S3 URI needs a bucket (s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def s3_client():
    """boto3 S3 client; the endpoint comes from ``AWS_ENDPOINT_URL`` (boto3 reads it) or
    ``MLFLOW_S3_ENDPOINT_URL`` (what MLflow deployments already set)."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")


class FeatureSink:
    """Thread-safe JSONL writer to a directory or an S3 prefix, with request sampling."""

    def __init__(self, uri: str | Path, sample_rate: float = 1.0, flush_every: int = 50) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        self.uri = str(uri)
        self.sample_rate = sample_rate
        self.flush_every = max(1, flush_every)
        self.is_s3 = self.uri.startswith("s3://")
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._seq = 0
        self._writer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._rng = random.Random()
        if self.is_s3:
            self._bucket, self._prefix = _split_s3(self.uri)
            self._s3 = s3_client()
        else:
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    def _key(self, when: dt.datetime) -> str:
        part = f"date={when:%Y-%m-%d}/hour={when:%H}"
        self._seq += 1
        name = f"{self._writer_id}-{self._seq:06d}.jsonl"
        return f"{self._prefix}/{part}/{name}" if self._prefix else f"{part}/{name}"

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or self._rng.random() < self.sample_rate

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (already sampled); S3 uploads every ``flush_every`` records."""
        line = json.dumps(clean_record(record), default=float)
        with self._lock:
            if self.is_s3:
                self._buffer.append(line)
                if len(self._buffer) >= self.flush_every:
                    self._flush_locked()
            else:
                when = _now()
                path = Path(self.uri) / f"features-{when:%Y%m%d-%H}-{self._writer_id}.jsonl"
                with path.open("a") as f:  # one small append per line: nothing lost on a crash
                    f.write(line + "\n")

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        body = ("\n".join(self._buffer) + "\n").encode()
        self._s3.put_object(Bucket=self._bucket, Key=self._key(_now()), Body=body)
        self._buffer.clear()

    def flush(self) -> None:
        with self._lock:
            if self.is_s3:
                self._flush_locked()

    def close(self) -> None:
        self.flush()


def make_record(
    rois: np.ndarray,
    log_probs: np.ndarray | None = None,
    *,
    fps: float = 25.0,
    mouth_found: float | np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """A timestamped feature record of one request; ``meta`` (model version, request id...)
    is stored beside the features and ignored by the drift check."""
    feats = request_features(
        rois, log_probs, fps=fps, mouth_found=mouth_found, embeddings=embeddings
    )
    return {"ts": _now().isoformat(timespec="milliseconds"), **meta, **feats}


_DEFAULT: FeatureSink | None = None
_DEFAULT_LOCK = threading.Lock()


def default_sink() -> FeatureSink | None:
    """The process-wide sink named by ``MOUTHMAP_DRIFT_SINK`` (None when it is unset)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None and os.environ.get(ENV_SINK):
            _DEFAULT = FeatureSink(
                os.environ[ENV_SINK],
                sample_rate=float(os.environ.get(ENV_SAMPLE, "1.0")),
                flush_every=int(os.environ.get(ENV_FLUSH, "50")),
            )
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def record_request(
    rois: np.ndarray,
    log_probs: np.ndarray | None = None,
    *,
    sink: FeatureSink | None = None,
    fps: float = 25.0,
    mouth_found: float | np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    **meta: Any,
) -> dict[str, Any] | None:
    """The one call for the serving path: sample, compute the features, write them.

    ``rois``: the request's ``(T, 96, 96)`` uint8 mouth ROIs; ``log_probs``: the model's
    ``(T, C)`` output; ``mouth_found``: the track's per-frame flags or their share. Returns the
    record written, or None when the request was not sampled, no sink is configured, or
    anything failed (logged as a warning: a monitoring fault never fails a request).
    """
    try:
        sink = sink or default_sink()
        if sink is None or not sink.sampled():
            return None
        record = make_record(
            rois, log_probs, fps=fps, mouth_found=mouth_found, embeddings=embeddings, **meta
        )
        sink.write(record)
        return record
    except Exception as e:  # noqa: BLE001 - see docstring
        log.warning("drift monitor: request features not recorded: %s", e)
        return None


# --- reading a window back ----------------------------------------------------------------


def _parse_lines(text: str, source: str) -> Iterable[dict[str, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: not a JSON line, skipped", source, n)


def _local_records(path: Path) -> Iterable[dict[str, Any]]:
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    for f in files:
        yield from _parse_lines(f.read_text(), str(f))


def _s3_records(uri: str, since: dt.datetime | None) -> Iterable[dict[str, Any]]:
    bucket, prefix = _split_s3(uri)
    client = s3_client()
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""
    )
    for page in pages:
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith(".jsonl"):
                continue
            if since is not None and obj["LastModified"] < since:
                continue  # written before the window opened: cannot hold its records
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            yield from _parse_lines(body, f"s3://{bucket}/{key}")


def parse_since(value: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """``"1h"``, ``"30m"``, ``"2d"`` before now, or an ISO timestamp; None for no bound."""
    if not value:
        return None
    now = now or _now()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return now - dt.timedelta(seconds=float(value[:-1]) * units[value[-1]])
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since {value!r}: use e.g. 1h, 30m, 2d or an ISO timestamp") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def load_window(
    source: str | Path, since: str | dt.datetime | None = None, last: int | None = None
) -> pd.DataFrame:
    """The records of a JSONL file, a directory of them, an ``s3://`` prefix, or a CSV, newer
    than ``since`` (records need a ``ts``), the ``last`` N of them when given."""
    when = parse_since(since) if isinstance(since, str) or since is None else since
    src = str(source)
    if src.endswith(".csv") and not src.startswith("s3://"):
        df = pd.read_csv(src)
    else:
        if src.startswith("s3://"):
            records = list(_s3_records(src, when))
        else:
            path = Path(src)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file or directory")
            records = list(_local_records(path))
        df = pd.DataFrame.from_records(records)
    if "ts" in df.columns:
        df["ts"] = pd.to_datetime(df["ts"], utc=True, errors="coerce", format="ISO8601")
        if when is not None:
            df = df[df["ts"] >= pd.Timestamp(when)]
        df = df.sort_values("ts")
    if last is not None:
        df = df.tail(last)
    return df.reset_index(drop=True)


def write_jsonl(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Records as a JSONL file (used to hand a window to ``mouthmap drift check``)."""
    buf = io.StringIO()
    for r in records:
        buf.write(json.dumps(clean_record(r), default=float) + "\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())
    return path
