//! The `Newsletter` service of `newsletter.proto`, shared by the example and
//! `tests/grpc.rs`: each handler takes its `BackgroundTasks` from
//! `tonic::Request::extensions()` and queues work that starts once its
//! response has ended.

use std::pin::Pin;

use futures_util::stream::{self, Stream};
use tonic::{Request, Response, Status};
use tower_background::BackgroundTasks;

use proto::{ArchiveRequest, Issue, SubscribeReply, SubscribeRequest};

/// The messages, client and server that build.rs generated from
/// `newsletter.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub(crate) mod proto {
    tonic::include_proto!("newsletter");
}

/// The archive, oldest first: each issue's number and title.
const ISSUES: [(u32, &str); 3] = [
    (1, "Background tasks, after the response"),
    (2, "Draining within a grace period"),
    (3, "Streams, trailers and gRPC"),
];

/// The service. Its tasks only print; a real one would send the e-mail and
/// write the record.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Newsletter;

#[tonic::async_trait]
impl proto::newsletter_server::Newsletter for Newsletter {
    /// Answers at once; the welcome e-mail is sent after the reply and its
    /// `grpc-status` trailer have gone out.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<SubscribeReply>, Status> {
        let tasks = background_tasks(&request)?;
        let email = checked(request.into_inner().email)?;

        let to = email.clone();
        tasks.add(async move {
            println!("sent the welcome e-mail to {to}");
        });
        Ok(Response::new(SubscribeReply {
            email,
            queued: vec!["welcome e-mail".to_owned()],
        }))
    }

    type ArchiveStream = Pin<Box<dyn Stream<Item = Result<Issue, Status>> + Send>>;

    /// Streams the newest `count` issues; that the subscriber read them is
    /// recorded after the last one and the `grpc-status` trailer.
    async fn archive(
        &self,
        request: Request<ArchiveRequest>,
    ) -> Result<Response<Self::ArchiveStream>, Status> {
        let tasks = background_tasks(&request)?;
        let ArchiveRequest { email, count } = request.into_inner();
        let email = checked(email)?;

        let issues: Vec<Issue> = ISSUES
            .iter()
            .rev()
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .map(|&(number, title)| Issue {
                number,
                title: title.to_owned(),
            })
            .collect();
        let read = issues.len();
        tasks.add(async move {
            println!("recorded that {email} read {read} issue(s) of the archive");
        });
        Ok(Response::new(Box::pin(stream::iter(
            issues.into_iter().map(Ok),
        ))))
    }
}

/// The handle `BackgroundTaskLayer` put in the request's extensions, or a
/// status that names the missing layer.
fn background_tasks<T>(request: &Request<T>) -> Result<BackgroundTasks, Status> {
    request
        .extensions()
        .get::<BackgroundTasks>()
        .cloned()
        .ok_or_else(|| {
            Status::internal(
                "no BackgroundTasks in the request: add `.layer(supervisor.layer())` \
                 (BackgroundTaskLayer) to tonic's Server::builder()",
            )
        })
}

/// `email` if it looks like `user@domain`.
fn checked(email: String) -> Result<String, Status> {
    match email.split_once('@') {
        Some((user, domain)) if !user.is_empty() && !domain.is_empty() => Ok(email),
        _ => Err(Status::invalid_argument(format!(
            "{email:?} is not an e-mail address (expected user@domain)"
        ))),
    }
}
