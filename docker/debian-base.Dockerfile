# A stand-in for python:3.11-slim-bookworm made from Debian packages only, for machines that
# cannot pull public images: `mouthmap images build` makes it (debootstrap --variant=minbase
# bookworm, imported as ROOTFS_IMAGE) and passes it to the Dockerfile as PYTHON_IMAGE.
# Python 3.11 is bookworm's own (3.11.2), with its shared library as in the public image (the
# Triton Python backend's stub links it). The build context's ca-certificates/ holds the
# building machine's local CAs (/usr/local/share/ca-certificates), so pip and uv inside the
# builds trust what the machine trusts (an egress proxy's CA, say); usually it is empty.
ARG ROOTFS_IMAGE=mouthmap/debian:bookworm-minbase
FROM ${ROOTFS_IMAGE}
COPY ca-certificates/ /usr/local/share/ca-certificates/
# apt keeps no package caches in an image layer (what Docker's official Debian images do)
RUN printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
      'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };' \
      > /etc/apt/apt.conf.d/docker-clean
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libpython3.11 \
       ca-certificates \
    && update-ca-certificates \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
              /usr/share/locale/* /var/cache/debconf/*-old /var/log/*.log
# pip vendors its own CA list and uv reads this variable: both see the machine's CAs
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8
CMD ["python3"]
