//! The `IdAllocator` gRPC service of `fastim idgen`.

use std::sync::Arc;

use fastim_proto::internal::id_allocator_server::IdAllocator;
use fastim_proto::internal::{IdReply, IdRequest};
use tonic::{Request, Response, Status};

use crate::Snowflake;
use crate::segment::{SegmentAllocator, SegmentError};

/// Most ids in one request.
pub const MAX_COUNT: u32 = 10_000;

/// Serves segment ids and snowflake ids.
pub struct IdService {
    /// Per-tag segments from etcd.
    pub segments: SegmentAllocator,
    /// Snowflake ids of this allocator's leased worker id.
    pub snowflake: Arc<Snowflake>,
}

fn count(request: &IdRequest) -> Result<usize, Status> {
    match request.count {
        0 => Ok(1),
        n if n <= MAX_COUNT => Ok(n as usize),
        _ => Err(Status::invalid_argument(format!("count: at most {MAX_COUNT}"))),
    }
}

#[tonic::async_trait]
impl IdAllocator for IdService {
    async fn segment(&self, request: Request<IdRequest>) -> Result<Response<IdReply>, Status> {
        let request = request.into_inner();
        let n = count(&request)?;
        match self.segments.next_ids(&request.tag, n).await {
            Ok(ids) => Ok(Response::new(IdReply { ids })),
            Err(SegmentError::BadTag) => Err(Status::invalid_argument(SegmentError::BadTag.to_string())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn snowflake(&self, request: Request<IdRequest>) -> Result<Response<IdReply>, Status> {
        let n = count(&request.into_inner())?;
        let ids: Result<Vec<u64>, _> = (0..n).map(|_| self.snowflake.next_id()).collect();
        ids.map(|ids| Response::new(IdReply { ids }))
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}
