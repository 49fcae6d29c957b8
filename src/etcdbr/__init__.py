"""etcd-backup-restore: backup, restore and disaster-recovery sidecar for etcd."""

__version__ = "0.1.0"
