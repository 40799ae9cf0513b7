import sys, grpc
sys.path.insert(0, sys.argv[2])
from jobmesh.v1 import pipelines_pb2
ch = grpc.insecure_channel(sys.argv[1])
get = ch.unary_unary("/jobmesh.v1.PipelineService/GetPipeline",
    request_serializer=pipelines_pb2.GetPipelineRequest.SerializeToString,
    response_deserializer=pipelines_pb2.GetPipelineResponse.FromString)
res = get(pipelines_pb2.GetPipelineRequest(name="pipelines/document-default"), timeout=5)
print(res.pipeline.name, len(res.pipeline.config.stages))
try:
    get(pipelines_pb2.GetPipelineRequest(name="Bad Name"), timeout=5)
except grpc.RpcError as e:
    print(e.code().name, e.details())
