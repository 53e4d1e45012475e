#!/usr/bin/env bash
# Install the offline datasets priorshift uses from Debian packages, when this machine allows it.
# Prints what it did; never fails the build (tests that need the data skip with a clear reason).
set -u
pkg=dataset-fashion-mnist
if dpkg -s "$pkg" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "priorshift: installing Debian package $pkg (Fashion-MNIST, 30 MB) ..."
  (apt-get install -y -qq "$pkg" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$pkg" >/dev/null 2>&1; }) \
    && echo "priorshift: $pkg installed." \
    || echo "priorshift: could not install $pkg; Fashion-MNIST parts will be skipped (run: sudo apt-get install $pkg)."
else
  echo "priorshift: Fashion-MNIST is not installed and this shell cannot apt-get; run: sudo apt-get install $pkg"
fi
exit 0
