# The pdlab image: what the in-cluster load Job runs (`backend.k8s.load: job`, `python -m pdlab.measure.loadpod`),
# and a pdlab you can `kubectl run` next to the router. Build and push it to a registry your nodes pull from:
#   docker build -t <registry>/<namespace>/pdlab:<tag> .
#   docker push <registry>/<namespace>/pdlab:<tag>
# then set backend.k8s.load_image: <registry>/<namespace>/pdlab and backend.k8s.load_image_tag: <tag>.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/pdlab
COPY pyproject.toml README.md ./
COPY pdlab ./pdlab
COPY notebooks ./notebooks
RUN rm -f pdlab/notebooks && cp -r notebooks pdlab/notebooks && pip install . && rm -rf /root/.cache
USER 65532:65532
CMD ["python", "-m", "pdlab.measure.loadpod"]
