//! The pipeline stage: routes each intake ([`crate::message::Submission`]) through the policy
//! stage ([`crate::policy::stage`]) into the outbox in group commits, hands accepted cold-chain
//! readings to the cold-chain monitor, and tells each intake its outcome.

mod task;

pub use task::Pipeline;
