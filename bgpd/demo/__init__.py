"""`routemesh demo`: a four-host cluster in network namespaces, its tenants and their policy.

`lab.py` builds and removes the namespaces and processes (and records them so that `--down`
works from a fresh process), `cluster.py` runs the scenario, `proxy.py` carries an etcd that
lives outside the namespaces into them. Printing stays in `bgpd/cli/demo.py`.
"""
