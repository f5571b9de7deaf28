"""Speed of fcos_d2 against its peers: ``python -m benchmarks.benchmark`` (see there).

``models`` builds the detectors, ``timing`` measures them, ``report`` renders the JSON
results as markdown tables; ``backbones.py`` and ``export_latency.py`` are scripts of
their own.
"""
