# Builds and runs the appliance in a container. The data folder is a volume; /dev/kvm is passed in by
# docker-compose.yml (without it the appliance falls back to TCG software emulation).
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      nodejs npm busybox-static linux-image-cloud-amd64 cpio xz-utils zstd \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN npm ci --no-audit --no-fund \
 && node scripts/copy-assets.mjs \
 && scripts/demo-guest/build.sh /out/demo-guest \
 && dotnet publish src/Appliance.Web -c Release -o /out/app

FROM mcr.microsoft.com/dotnet/aspnet:10.0
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/app /app
COPY --from=build /out/demo-guest /app/demo-guest
ENV APPLIANCE_DATA_DIR=/data \
    Appliance__DemoGuestDirectory=/app/demo-guest
VOLUME /data
EXPOSE 5080
ENTRYPOINT ["dotnet", "/app/Appliance.Web.dll", "--urls", "http://0.0.0.0:5080"]
