"""Our side of each benchmark, run as a separate process so its peak RSS is ours alone.

Each driver prints one JSON object on its last stdout line: what it measured, plus
``peak_rss_mib`` (``ru_maxrss`` of the driver process itself).
"""
