//! A tiny studio-relay client: connects, prints every frame, optionally
//! subscribes. `cargo run --example client -- ws://127.0.0.1:4456/ws?agentId=a1 [MAX_FRAMES]`

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:4456/ws?all=true".to_owned());
    let max: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let mut seen = 0;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) => {
                println!("{}", t.as_str());
                seen += 1;
                if seen >= max {
                    break;
                }
            }
            Message::Close(c) => {
                println!("closed: {c:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
