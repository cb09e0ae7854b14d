#!/usr/bin/python3
"""Test RTSP server: streams a still picture (re-read when it changes) as H.264.

Usage:
    python3 tests/rtsp/server.py --port 8554 --image DIR/current.png \
        [--fps 5] [--path /cam] [--size WxH] [--user U --password P]

Serves rtsp://127.0.0.1:PORT/PATH (shared media: any number of clients,
RTP over TCP-interleaved or UDP).  The picture at --image (PNG or JPEG) is
decoded with GStreamer, scaled to a fixed size and pushed into an appsrc at
--fps frames per second; the file is stat()ed every frame and re-decoded when
its inode, size or mtime changes, so replacing it (write a temp file, then
rename over it) switches the scene within one frame.  A half-written or
unreadable file keeps the previous picture.

Prints "READY rtsp://127.0.0.1:PORT/PATH" (flushed) on stdout once the
socket is listening (--port 0 picks a free port; READY shows which).
SIGTERM/SIGINT end it with exit status 0.  With --exit-on-stdin-eof it also
exits when its stdin closes (so a test that dies does not leave it behind).

Needs Debian's gir1.2-gst-rtsp-server-1.0 and python3-gi (see README.md);
x264enc (gstreamer1.0-plugins-ugly) is used if present, else openh264enc.
"""

import argparse
import os
import signal
import struct
import sys
import threading


def _reexec_with_system_python():
    """The packages are Debian's: if this interpreter (pyenv, venv) has no
    `gi`, run again under /usr/bin/python3, which does."""
    try:
        import gi  # noqa: F401
        return
    except ImportError:
        pass
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system) \
            and not os.environ.get("RTSP_TEST_SERVER_REEXEC"):
        os.environ["RTSP_TEST_SERVER_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)
    sys.stderr.write("server.py: python3-gi missing: apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi\n")
    sys.exit(2)


_reexec_with_system_python()

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtsp, GstRtspServer, GstVideo  # noqa: E402,F401

MAX_DIM = 4096  # refuse decompression bombs (header checked before decoding)


def log(msg):
    sys.stderr.write("server.py: %s\n" % msg)
    sys.stderr.flush()


def image_size(path):
    """(width, height) from a PNG IHDR or JPEG SOFn header, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:2] != b"\xff\xd8":
                return None
            f.seek(2)
            while True:
                b = f.read(1)
                if not b:
                    return None
                if b != b"\xff":
                    continue
                marker = f.read(1)
                while marker == b"\xff":
                    marker = f.read(1)
                if not marker:
                    return None
                m = marker[0]
                if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
                    continue
                seglen = f.read(2)
                if len(seglen) < 2:
                    return None
                (n,) = struct.unpack(">H", seglen)
                if m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    seg = f.read(5)
                    if len(seg) < 5:
                        return None
                    h, w = struct.unpack(">HH", seg[1:5])
                    return (w, h)
                f.seek(n - 2, 1)
    except OSError:
        return None


def i420_info(width, height):
    """GStreamer's default I420 layout (rows padded to 4 bytes: a 50 px wide
    frame has a 52-byte Y stride), shared by the decoder's output and appsrc."""
    info = GstVideo.VideoInfo()
    info.set_format(GstVideo.VideoFormat.I420, width, height)
    return info


def decode_to_i420(path, width, height):
    """Decode PNG/JPEG at path to one I420 frame of width x height (bytes, in
    GStreamer's default layout), or None.  Aspect ratio is not kept (the test images are the stream's
    size, or nearly: odd sizes are stretched by one pixel)."""
    size = image_size(path)
    if size is None:
        log("decode %s: not a PNG/JPEG" % path)
        return None
    if not (0 < size[0] <= MAX_DIM and 0 < size[1] <= MAX_DIM):
        log("decode %s: %dx%d is larger than %dx%d" % (path, size[0], size[1], MAX_DIM, MAX_DIM))
        return None
    desc = (
        # Via RGB: jpegdec gives full-range I420 and videoconvert 1.22 passes
        # it through unchanged as "bt601" (limited) I420, raising contrast.
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=RGBx "
        "! videoscale add-borders=false ! videoconvert "
        "! video/x-raw,format=I420,width=%d,height=%d,pixel-aspect-ratio=1/1,colorimetry=bt601 "
        "! appsink name=sink sync=false max-buffers=1" % (width, height)
    )
    pipe = Gst.parse_launch(desc)
    pipe.get_by_name("src").set_property("location", path)
    sink = pipe.get_by_name("sink")
    # Preroll rather than pull: get_state() returns at once on an error
    # (a truncated PNG), where try_pull_sample() would wait out its timeout
    # and stall the main loop, and so the stream.
    pipe.set_state(Gst.State.PAUSED)
    ret, _state, _pending = pipe.get_state(2 * Gst.SECOND)
    sample = sink.try_pull_preroll(0) if ret == Gst.StateChangeReturn.SUCCESS else None
    data = None
    if sample is not None:
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            data = bytes(info.data)
            buf.unmap(info)
    else:
        msg = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            log("decode %s: %s" % (path, msg.parse_error()[0].message))
    pipe.set_state(Gst.State.NULL)
    expect = i420_info(width, height).size
    if data is not None and len(data) != expect:
        log("decode %s: got %d bytes, want %d" % (path, len(data), expect))
        return None
    return data


def grey_i420(width, height):
    return b"\x80" * i420_info(width, height).size


class Source:
    """Holds the current frame, re-decoding the file when it changes, and
    pushes it into every live appsrc at the configured rate."""

    def __init__(self, path, width, height, fps):
        self.path = path
        self.width = width
        self.height = height
        self.fps = fps
        self.key = None
        self.failed_key = None
        self.frame = grey_i420(width, height)
        self.appsrcs = []
        self.lock = threading.Lock()
        self.refresh()

    def refresh(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key == self.key or key == self.failed_key:
            return
        data = decode_to_i420(self.path, self.width, self.height)
        if data is None:
            # keep the old frame; retry when the file changes again
            self.failed_key = key
            log("picture %s unreadable, keeping the previous one" % self.path)
            return
        self.key = key
        self.frame = data
        log("picture %s loaded (%d bytes on disk)" % (self.path, st.st_size))

    def add(self, appsrc, pay):
        with self.lock:
            self.appsrcs.append((appsrc, pay))
        # First frame now rather than at the next tick: DESCRIBE waits for it.
        GLib.idle_add(self.push, [appsrc])

    def remove(self, appsrc):
        with self.lock:
            self.appsrcs = [(a, p) for (a, p) in self.appsrcs if a is not appsrc]

    def force_keyframe(self):
        """A client joining the shared stream gets an IDR (with SPS/PPS) at
        the next frame instead of waiting up to --gop frames."""
        with self.lock:
            pays = [p for (_a, p) in self.appsrcs]
        for pay in pays:
            ev = GstVideo.video_event_new_upstream_force_key_unit(Gst.CLOCK_TIME_NONE, False, 0)
            pay.get_static_pad("sink").push_event(ev)

    def push(self, targets):
        buf = Gst.Buffer.new_wrapped(self.frame)
        buf.duration = Gst.SECOND // self.fps
        for appsrc in targets:
            appsrc.emit("push-buffer", buf)
        return GLib.SOURCE_REMOVE

    def tick(self):
        self.refresh()
        with self.lock:
            targets = [a for (a, _p) in self.appsrcs]
        if targets:
            self.push(targets)
        return GLib.SOURCE_CONTINUE


def set_auth_methods_both(auth):
    """BASIC|DIGEST: the typelib declares GstRTSPAuthMethod an enum, so
    PyGObject refuses the value 3; call the C function directly."""
    import ctypes
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    lib = ctypes.CDLL("libgstrtspserver-1.0.so.0")
    lib.gst_rtsp_auth_set_supported_methods.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.gst_rtsp_auth_set_supported_methods(get(auth.__gpointer__, None),
                                            int(GstRtsp.RTSPAuthMethod.BASIC) | int(GstRtsp.RTSPAuthMethod.DIGEST))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8554, help="TCP port for RTSP (0: any free port)")
    ap.add_argument("--image", required=True, help="PNG/JPEG file to stream; re-read when it changes")
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--path", default="/cam", help="mount point (default /cam)")
    ap.add_argument("--size", help="WxH of the stream (default: the image's size rounded up to even)")
    ap.add_argument("--gop", type=int, default=0, help="frames between keyframes (default: fps, i.e. 1 s)")
    ap.add_argument("--profile", choices=["constrained-baseline", "main"], default="constrained-baseline")
    ap.add_argument("--encoder", choices=["auto", "x264", "openh264"], default="auto")
    ap.add_argument("--user", help="require RTSP auth with this user name")
    ap.add_argument("--password", default="", help="password for --user")
    ap.add_argument("--auth", choices=["basic", "digest", "both"], default="digest",
                    help="auth methods offered with --user (default digest)")
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="exit when stdin is closed")
    args = ap.parse_args()

    Gst.init(None)

    if args.fps < 1 or args.fps > 60:
        ap.error("--fps must be 1..60")
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            ap.error("--size must be WxH")
    else:
        size = image_size(args.image)
        if size is None:
            ap.error("--image %s: not a readable PNG/JPEG (or give --size)" % args.image)
        w, h = size
        if not (0 < w <= MAX_DIM and 0 < h <= MAX_DIM):
            ap.error("--image %s: %dx%d is larger than %dx%d" % (args.image, w, h, MAX_DIM, MAX_DIM))
    w, h = w + (w & 1), h + (h & 1)
    if not (16 <= w <= MAX_DIM and 16 <= h <= MAX_DIM):
        # H.264 codes whole 16x16 macroblocks; smaller pictures are scaled up.
        w, h = max(16, min(w, MAX_DIM)), max(16, min(h, MAX_DIM))
    gop = args.gop or args.fps

    encoder = args.encoder
    if encoder == "auto":
        encoder = "x264" if Gst.ElementFactory.find("x264enc") else "openh264"
    if encoder == "openh264" and args.profile != "constrained-baseline":
        ap.error("openh264enc only makes Constrained Baseline")
    if encoder == "x264":
        # Single thread => single slice per frame, no B-frames (zerolatency),
        # constant quality so the still picture comes through nearly losslessly.
        enc = ("x264enc tune=zerolatency speed-preset=veryfast threads=1 key-int-max=%d "
               "pass=quant quantizer=18 bframes=0 aud=false" % gop)
        # x264 repeats SPS/PPS before every IDR itself.
        config_interval = 0
    else:
        enc = ("openh264enc gop-size=%d rate-control=quality complexity=low "
               "multi-thread=1 slice-mode=n-slices num-slices=1 bitrate=2000000" % gop)
        # openh264 also repeats SPS/PPS before every IDR itself.
        config_interval = 0

    src = Source(args.image, w, h, args.fps)
    # colorimetry=bt601: limited ("tv") range BT.601, which x264 signals in the
    # VUI; the decoder above converts to it (jpegdec alone would give full range).
    caps = ("video/x-raw,format=I420,width=%d,height=%d,framerate=%d/1,pixel-aspect-ratio=1/1,"
            "colorimetry=bt601" % (w, h, args.fps))
    launch = (
        "( appsrc name=src is-live=true do-timestamp=true format=time leaky-type=upstream "
        "max-buffers=2 caps=%s ! queue max-size-buffers=2 leaky=downstream ! %s "
        "! video/x-h264,profile=%s,stream-format=byte-stream "
        "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=%d aggregate-mode=zero-latency )"
        % (caps, enc, args.profile, config_interval)
    )

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)

    def on_media_configure(_factory, media):
        appsrc = media.get_element().get_by_name("src")
        src.add(appsrc, media.get_element().get_by_name("pay0"))
        media.connect("unprepared", lambda _m: src.remove(appsrc))

    factory.connect("media-configure", on_media_configure)
    server.connect("client-connected",
                   lambda _s, client: client.connect("play-request", lambda _c, _ctx: src.force_keyframe()))

    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        if args.auth == "both":
            set_auth_methods_both(auth)
        else:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC if args.auth == "basic"
                                       else GstRtsp.RTSPAuthMethod.DIGEST)
        if args.auth in ("basic", "both"):
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        if args.auth in ("digest", "both"):
            auth.add_digest(args.user, args.password, token)
        server.set_auth(auth)
        perms = Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")
        factory.add_role_from_structure(perms)

    server.get_mount_points().add_factory(args.path, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        log("cannot listen on 127.0.0.1:%d" % args.port)
        sys.exit(1)
    port = server.get_bound_port()

    def stop(*_a):
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, stop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, stop)
    if args.exit_on_stdin_eof:
        def on_stdin(fd, cond):
            if cond & (GLib.IOCondition.HUP | GLib.IOCondition.ERR):
                return stop()
            if not os.read(fd, 4096):
                return stop()
            return GLib.SOURCE_CONTINUE
        GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, sys.stdin.fileno(),
                              GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                              on_stdin)

    GLib.timeout_add(max(1, 1000 // args.fps), src.tick)

    log("serving %s %dx%d @%d fps, %s, %s, keyframe every %d frames%s" % (
        args.image, w, h, args.fps, encoder, args.profile, gop,
        ", auth " + args.auth if args.user else ""))
    sys.stdout.write("READY rtsp://127.0.0.1:%d%s\n" % (port, args.path))
    sys.stdout.flush()
    loop.run()
    log("stopping")
    sys.exit(0)


if __name__ == "__main__":
    main()
