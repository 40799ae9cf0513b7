# argv: target, directory of the generated modules, access token (sent as a Bearer header).
import sys, grpc
sys.path.insert(0, sys.argv[2])
from jobmesh.v1 import pipelines_pb2
ch = grpc.insecure_channel(sys.argv[1])
metadata = (("authorization", f"Bearer {sys.argv[3]}"),)
get = ch.unary_unary("/jobmesh.v1.PipelineService/GetPipeline",
    request_serializer=pipelines_pb2.GetPipelineRequest.SerializeToString,
    response_deserializer=pipelines_pb2.GetPipelineResponse.FromString)
res = get(pipelines_pb2.GetPipelineRequest(name="pipelines/document-default"), timeout=5, metadata=metadata)
print(res.pipeline.name, len(res.pipeline.config.stages))
try:
    get(pipelines_pb2.GetPipelineRequest(name="Bad Name"), timeout=5, metadata=metadata)
except grpc.RpcError as e:
    print(e.code().name, e.details())
