"""The worker agent: stdlib-only, Python >= 3.8, shipped to hosts as one zipapp.

Nothing in this package imports from the rest of enosnet, so it runs on a host
that has only ``python3``. The coordinator imports ``wire`` from here, so both
sides always speak the same protocol.
"""
