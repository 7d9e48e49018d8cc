#!/usr/bin/env bash
# Make sure the system pieces that napari's GUI tests need are present: an X server (Xvfb)
# and the Qt/OpenGL libraries. Installs them with apt-get when run as root on Debian/Ubuntu;
# otherwise prints exactly what to install and fails.
set -euo pipefail

packages=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libx11-xcb1)
libraries=(libGL.so.1 libEGL.so.1 libglib-2.0.so.0 libfontconfig.so.1 libdbus-1.so.3
  libxkbcommon-x11.so.0 libxcb-icccm.so.4 libxcb-image.so.0 libxcb-keysyms.so.1
  libxcb-randr.so.0 libxcb-render-util.so.0 libxcb-xinerama.so.0 libxcb-xfixes.so.0
  libxcb-shape.so.0 libxcb-cursor.so.0 libX11-xcb.so.1)

missing=()
command -v Xvfb >/dev/null 2>&1 || missing+=(Xvfb)
command -v xauth >/dev/null 2>&1 || missing+=(xauth)
if command -v ldconfig >/dev/null 2>&1; then
  cache=$(ldconfig -p 2>/dev/null || true)
  for lib in "${libraries[@]}"; do
    grep -q "$lib" <<<"$cache" || missing+=("$lib")
  done
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "GUI test prerequisites missing: ${missing[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing them with apt-get (running as root)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  echo "Installed: ${packages[*]}"
  exit 0
fi
echo "Install them, then run the tests again. On Debian/Ubuntu:"
echo "  sudo apt-get update && sudo apt-get install -y ${packages[*]}"
echo "On other systems install an X virtual framebuffer (Xvfb) and Qt's xcb dependencies."
exit 1
