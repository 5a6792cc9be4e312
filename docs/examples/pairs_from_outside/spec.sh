# spec.sh: writes <kind>_k<k>.yaml for the three kinds of pair and k = 1, 10 (membership only)
# writes <kind>_k<k>.yaml
for kind in null retrain ascent; do for k in 1 10; do
cat > ${kind}_k${k}.yaml <<YAML
experiment: ${kind}-k${k}
dataset: {name: files, path: data.npz}
pair:
  original: ${kind}_k${k}_theta.pt2
  unlearned: ${kind}_k${k}_theta_u.pt2
  format: torch_export
  forget: forget_k${k}.txt
  attacks: [{attack: membership}]
YAML
done; done
