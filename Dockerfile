# The servomexlib acquisition service in a container.
#
#   docker build -t servomex .
#   docker run -d --name lab3 --restart unless-stopped \
#     --device /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1XYZ-if00-port0 \
#     --group-add dialout \
#     -v /etc/servomex/lab3.toml:/etc/servomex/plant.toml:ro \
#     -v servomex-state:/var/lib/servomex \
#     -p 127.0.0.1:9464:9464 \
#     servomex
#
# Pass each serial adapter with --device by its stable /dev/serial/by-id path and use that path
# as the bus `port` in the file. The spool lives in the volume at /var/lib/servomex, so ticks
# not yet delivered survive a restart of the container. With [http] listen = "0.0.0.0:9464"
# in the file, /metrics and /healthz are reachable through the published port.
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STATE_DIRECTORY=/var/lib/servomex

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir ".[parquet,postgres]" \
    && useradd --system --no-create-home --groups dialout servomex \
    && install -d -o servomex -g servomex /var/lib/servomex /etc/servomex

USER servomex
VOLUME ["/var/lib/servomex"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"
# SIGTERM (docker stop) is a clean stop: the tick finishes, the spool is committed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["servomex", "run", "/etc/servomex/plant.toml"]
