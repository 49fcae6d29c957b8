from etcdbr.cli.cmd_server import EXTRA, GROUPS, apply_server_defaults
from etcdbr.cli.options import resolve


def _config(**params):
    config = resolve(params, *GROUPS, "logging", extra=EXTRA)
    apply_server_defaults(config)
    return config


def test_initializer_restores_from_auto_when_a_secondary_is_configured():
    assert _config().restoration.restore_from == "primary"
    both = _config(storage_provider="S3", store_container="a", secondary_storage_provider="GCS",
                   secondary_store_container="b")
    assert both.restoration.restore_from == "auto"
    chosen = _config(storage_provider="S3", store_container="a", secondary_storage_provider="GCS",
                     secondary_store_container="b", restore_from="primary")
    assert chosen.restoration.restore_from == "primary"
