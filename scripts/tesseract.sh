#!/usr/bin/env bash
# Install the Tesseract OCR CLI with German and English models from Debian's packages.
# Only needed for `bench/vision_receipts.py --engine tesseract` (the fallback engine that
# the benchmark compares against RapidOCR, whose models ship inside its PyPI wheel).
#
#   scripts/tesseract.sh        install if `tesseract` or its deu/eng models are missing; quick no-op otherwise
#
# Needs root (or sudo) for apt-get. Idempotent: when tesseract and both language models are
# present it only prints the version and exits without touching apt.
set -euo pipefail

PACKAGES=(tesseract-ocr tesseract-ocr-deu tesseract-ocr-eng)

have_all() {
    command -v tesseract >/dev/null 2>&1 || return 1
    local langs
    langs=$(tesseract --list-langs 2>/dev/null) || return 1
    grep -qx deu <<<"$langs" && grep -qx eng <<<"$langs"
}

if have_all; then
    echo "# $(tesseract --version 2>&1 | head -n 1) with deu+eng already installed" >&2
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: run as root (apt-get needs it) or install sudo" >&2; exit 1; }
    SUDO=(sudo)
fi
command -v apt-get >/dev/null 2>&1 || { echo "error: apt-get not found; install ${PACKAGES[*]} with your package manager" >&2; exit 1; }

echo "# installing ${PACKAGES[*]} from Debian packages" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

if ! have_all; then
    echo "error: tesseract installed but the deu/eng models are not listed by 'tesseract --list-langs'" >&2
    exit 1
fi
echo "# $(tesseract --version 2>&1 | head -n 1) with deu+eng installed" >&2
