"""The self-service portal (`llmkeys portal`): a server-rendered web app in front of the API server.

Developers sign in with the company's OpenID Connect provider, then see, create, reveal, rotate,
suspend and delete their VirtualKeys; approvers act on pending keys; admins see every key. The
portal holds no authority of its own: every Kubernetes call impersonates the signed-in user and
groups (`kubeapi`), so RBAC and the admission webhook decide exactly as they do for kubectl.
Layers call downwards only: `app` (routes) -> `pages` (pure view models), `guardrails` (what
policies allow) -> `kubeapi` / `oidc` / `session` -> `settings`.
"""
