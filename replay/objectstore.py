"""A run's export folders on an S3-compatible object store, through boto3 (the AWS SDK's own
credential chain: environment, profiles, instance roles; nothing in configs). Objects are
written with single PUTs: export files are small, and pyarrow's S3 filesystem always uploads
in parts, which S3-compatible servers do not all complete alike (moto's answer fails pyarrow
26's check). Writers push each folder they publish; a judge on another machine pulls the folders
it has not seen into its local run folder and reads them there. Folders are immutable, so each
is copied once; a folder's manifest is copied last, and a reader takes a folder only with it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from shadowdiff.schemas.config import SharedSpec
from shadowdiff.schemas.layout import RunLayout

MANIFEST = "manifest.json"
RUN_FILES = ("policy.json", "run.json", "served-run.json")  # served-run.json: a served-traffic run's config


@contextmanager
def _as_os_error(what: str) -> Iterator[None]:
    """The object store's errors as OSError, as a full local disk's: the caller retries later."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as err:
        raise OSError(f"{what}: {err}") from err


class SharedRun:
    def __init__(self, spec: SharedSpec, run_id: str) -> None:
        import boto3

        parts = urlsplit(spec.url)
        self.bucket = parts.netloc
        self.prefix = "/".join(x for x in (parts.path.strip("/"), run_id) if x)
        self.client = boto3.client(
            "s3",
            endpoint_url=spec.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
            region_name=spec.region or os.environ.get("AWS_REGION", "us-east-1"),
        )
        self.url = f"s3://{self.bucket}/{self.prefix}"

    # writers

    def push_file(self, local: Path, name: str) -> None:
        with _as_os_error(f"writing {self.url}/{name}"):
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}", Body=local.read_bytes())

    def push_folder(self, local: Path, name: str) -> None:
        """A published export folder, its manifest last."""
        files = sorted(p for p in local.iterdir() if p.name != MANIFEST)
        for f in [*files, local / MANIFEST]:
            self.push_file(f, f"{name}/{f.name}")

    # the judge

    def pull(self, layout: RunLayout) -> int:
        """Copy the folders not yet here, the heartbeats and the run's policy into `layout`;
        the number of new folders."""
        names: set[str] = set()
        with _as_os_error(f"listing {self.url}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
                names |= {o["Key"][len(self.prefix) + 1 :] for o in page.get("Contents", [])}
        new = 0
        # the replay's exports, the outcome workers' (replay/outcomes.py) and the served-traffic workers'
        published = ("exports/", "outcome-exports/", "served-exports/")
        for name in sorted(n for n in names if n.startswith(published) and n.endswith("/" + MANIFEST)):
            folder = name[: -len(MANIFEST) - 1]
            target = layout.dir / folder
            if (target / MANIFEST).exists():
                continue
            tmp = target.parent / f".pull-{target.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for n in sorted(x for x in names if x.startswith(folder + "/")):
                self._pull_file(n, tmp / n[len(folder) + 1 :])
            os.replace(tmp, target)
            new += 1
        for name in sorted(n for n in names if n.endswith("/heartbeat.json") or n in RUN_FILES):
            self._pull_file(name, layout.dir / name)
        return new

    def _pull_file(self, name: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        with _as_os_error(f"reading {self.url}/{name}"):
            tmp.write_bytes(self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")["Body"].read())
        os.replace(tmp, local)
