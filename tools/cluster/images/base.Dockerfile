# A Python 3.11 base for the FinServe image, made from Debian's packages alone (no registry
# can be reached where `make cluster` runs). It gives the project's Dockerfile what the Ray
# image gives it: a `ray` user (uid 1000, gid 100) with home /home/ray, and `python`/`pip` of
# a virtual environment on PATH. wget is for KubeRay's exec probes, bash for its `ray start`.
# The CA certificates this machine trusts (its package proxy's among them) are added, so that
# pip in the project's Dockerfile reaches PyPI as the host's pip does.
ARG ROOTFS=finserve-rootfs:bookworm
FROM ${ROOTFS}
COPY ca/ /usr/local/share/ca-certificates/
ENV PATH=/home/ray/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN update-ca-certificates >/dev/null \
    && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray \
    && su ray -c "python3 -m venv /home/ray/venv"
USER 1000:100
WORKDIR /home/ray
CMD ["/bin/bash"]
