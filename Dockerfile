# routemesh: the node daemon, the standalone bgpd and the `routemesh` CLI in one image.
#
#   docker build -t routemesh .
#
# A node, like calico/node: the host's network namespace, root and full privileges, because it
# writes the host's routes, links, iptables and ipsets (see docs/deploying.md):
#
#   docker run -d --name routemesh-node --net=host --privileged --user 0 \
#     -v /etc/routemesh:/etc/routemesh:ro -v /var/lib/routemesh:/var/lib/routemesh \
#     -v /run/routemesh:/run/routemesh -v /lib/modules:/lib/modules:ro \
#     routemesh node run --ip-autodetect can-reach=198.18.0.1
#
# A dedicated route reflector needs only port 179:
#
#   docker run -d --name routemesh-rr --net=host --user 0 --cap-drop ALL \
#     --cap-add NET_BIND_SERVICE -v /etc/routemesh:/etc/routemesh:ro \
#     routemesh bgpd -f /etc/routemesh/rr.toml
#
# Without --user the image runs as the unprivileged `routemesh` user (uid 1790): enough for the CLI
# (`routemesh get nodes`, `routemesh bgp status -s …`) and for tests.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bgpd ./bgpd
COPY agent ./agent
COPY policy ./policy
COPY ipam ./ipam
# Wheels for routemesh and all its dependencies; the runtime stage installs them offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="routemesh" \
      org.opencontainers.image.description="Calico-style L3 container networking with an embedded asyncio BGP speaker" \
      org.opencontainers.image.licenses="Apache-2.0"

# The kernel-facing tools the agent drives (iptables-nft-restore, ipset restore) and the ones
# operators reach for when they `docker exec` into it (ip, ss, ping). Versions follow the
# Debian point release of the base image, which is what security updates are published against.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 iptables ipset iputils-ping \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/routemesh-*.whl \
    && rm -rf /wheels

# A fixed uid/gid, so file ownership on mounted host directories is predictable.
RUN groupadd --system --gid 1790 routemesh \
    && useradd --system --uid 1790 --gid routemesh --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin routemesh \
    && mkdir -p /etc/routemesh /run/routemesh /var/lib/routemesh \
    && chown routemesh:routemesh /run/routemesh /var/lib/routemesh

COPY configs/cni/10-routemesh.conflist /usr/share/routemesh/cni/10-routemesh.conflist
COPY configs/rr/rr1.toml /usr/share/routemesh/examples/rr.toml

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# BGP and Prometheus /metrics, /livez, /readyz.
EXPOSE 179 9091
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/livez', timeout=4)"]

USER 1790:1790
ENTRYPOINT ["routemesh"]
CMD ["--help"]
