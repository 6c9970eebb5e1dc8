# qie-decode: JPEG (TurboJPEG), PNG (libspng), WebP (libwebp + libwebpdemux for animations),
# BMP/GIF/TIFF (FFmpeg: libavformat, libavcodec, libswscale, libavutil). Debian bookworm:
# libturbojpeg0-dev libspng-dev libwebp-dev libavformat-dev libavcodec-dev libswscale-dev
# libavutil-dev.
decode_PKGS := libturbojpeg spng libwebp libwebpdemux libavformat libavcodec libswscale libavutil
