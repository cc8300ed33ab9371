import os
import shutil
import uuid

import pytest

from tests.live.cluster import LiveCluster

needs = ["slurmctld", "slurmd", "munged", "runc", "catatonit"]
pytestmark = pytest.mark.live


def pytest_collection_modifyitems(config, items):
    missing = [b for b in needs if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]
    for item in items:
        if "live" in str(item.fspath) and (os.geteuid() != 0 or missing):
            if os.environ.get("ACCORDION_REQUIRE_LIVE"):
                raise pytest.UsageError(f"live tests required but cannot run: root={os.geteuid() == 0}, missing={missing}")
            item.add_marker(pytest.mark.skip(reason=f"live tests need root and {', '.join(missing) or 'root'} (run scripts/test.sh)"))


@pytest.fixture
def make_cluster(tmp_path):
    made: list[LiveCluster] = []

    def make(config: dict | None = None, prefix: str = "t", kind: type[LiveCluster] = LiveCluster) -> LiveCluster:
        c = kind(f"{prefix}-{uuid.uuid4().hex[:6]}", config or {}, tmp_path)
        made.append(c)
        c.up()
        return c

    yield make
    for c in made:
        c.down()
