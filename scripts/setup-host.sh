#!/usr/bin/env bash
# Install the Debian packages firecracer's tests and image builds use, when missing. Idempotent.
# Firecracker itself is not in any registry: see README ("Where Firecracker comes from").
set -euo pipefail
want=(binutils qemu-system-x86 chromium e2fsprogs debootstrap iproute2 openjdk-17-jdk-headless gcc)
# Spring PetClinic's jars (firecracer.image.apps.PETCLINIC.packages): the image's default workload,
# compiled and started on the host by tests/image/test_petclinic_host.py
want+=(libspring-web-servlet-java libspring-jdbc-java libspring-transaction-java libspring-context-java
       libjetty9-java libservlet-api-java libh2-java libjackson2-databind-java)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-host: all Debian packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: missing ${missing[*]} (run as root to install them); tests needing them will skip" >&2
  exit 0
fi
echo "setup-host: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
