"""The benchmark harness of issue 9: a blaster of pre-encoded UPDATEs, DUT adapters for BIRD,
FRR, GoBGP, ExaBGP and routemesh, the scenarios, and the report. Run: python -m tests.bench
"""
