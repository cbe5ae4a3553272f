//! The API key path allocates nothing: `Authenticator::authenticate` with a key (found,
//! unknown, disabled; from the credential header and from the key header), the identity it
//! returns, its claim headers and its allow-list check, counted by a global allocator that
//! counts this thread's allocations while a flag is set.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use shardgate::auth::apikey::record::generate_secret;
use shardgate::auth::{
    Accepts, AuthConfig, AuthError, Authenticator, Credentials, KeyRecord, Revocations, Scratch,
};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: the flag may be gone while the thread exits.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting has no effect on
// the memory returned.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from the system one.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn the_api_key_path_allocates_nothing() {
    let raw: AuthConfig = toml::from_str(
        "tenant_claim = \"tid\"\n[[claim_headers]]\nclaim = \"sub\"\nheader = \"x-user\"\n\
         [[claim_headers]]\nclaim = \"team\"\nheader = \"x-team\"\n\
         [api_keys]\nfile = \"keys.json\"\nheader = \"x-api-key\"\n",
    )
    .unwrap();
    let mut auth = Authenticator::from_config(&raw, Path::new(".")).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let now = 1_800_000_000;
    let mut keys = Vec::new();
    let mut records = Vec::new();
    for i in 0..1000 {
        let s = generate_secret(&rng, now).unwrap();
        records.push(KeyRecord {
            id: format!("key_{i}"),
            name: format!("k{i}"),
            owner: format!("owner-{i}"),
            tenant: Some("acme".into()),
            label: None,
            models: vec!["gpt-*".into()],
            scopes: vec!["chat".into()],
            budgets: vec![],
            claims: [("team".to_string(), "ml".to_string())].into(),
            expires_at: None,
            enabled: i != 1,
            created_at: now,
            secrets: vec![s.record],
        });
        keys.push(s.key);
    }
    auth.set_api_keys(&records).unwrap();
    let rev = Revocations::new();
    let mut scratch = Scratch::default();
    let any = Accepts {
        jwt: true,
        key: true,
    };
    let bearer: Vec<String> = keys.iter().map(|k| format!("Bearer {k}")).collect();
    let unknown = format!("Bearer sg-{}", "x".repeat(43));
    // The counter counts (so a zero below means something).
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 16]))) >= 1);
    let n = allocations(|| {
        for round in 0..10 {
            for (i, value) in bearer.iter().enumerate() {
                let cred = if round % 2 == 0 {
                    Credentials {
                        header: Some(value.as_bytes()),
                        key_header: None,
                    }
                } else {
                    Credentials {
                        header: None,
                        key_header: Some(keys[i].as_bytes()),
                    }
                };
                match auth.authenticate(cred, any, now, &rev, &mut scratch) {
                    Ok(id) => {
                        assert_eq!(id.api_key.map(|k| k.id()), Some(records[i].id.as_str()));
                        assert!(id.subject.starts_with("owner-"));
                        assert!(id.has_scope("chat"));
                        assert_eq!(auth.upstream_headers(&id).count(), 2);
                        assert!(id.api_key.unwrap().allows_model(Some("gpt-4o")));
                    }
                    Err(e) => assert_eq!((i, e), (1, AuthError::KeyDisabled)),
                }
            }
            let cred = Credentials {
                header: Some(unknown.as_bytes()),
                key_header: None,
            };
            assert_eq!(
                auth.authenticate(cred, any, now, &rev, &mut scratch)
                    .unwrap_err(),
                AuthError::KeyUnknown
            );
        }
    });
    assert_eq!(
        n, 0,
        "the API key path allocated {n} times in 10,010 requests"
    );
}
