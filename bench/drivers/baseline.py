"""RSS of a driver that only imports what the others use and opens nothing: the floor under
every other memory figure."""

from bench.drivers._util import emit

import etcdbr.copier  # noqa: F401,E402
import etcdbr.snapshotter  # noqa: F401,E402
import etcdbr.snapstore.gcs  # noqa: F401,E402
import etcdbr.snapstore.s3  # noqa: F401,E402

if __name__ == "__main__":
    emit({})
