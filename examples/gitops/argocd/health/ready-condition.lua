-- AIPolicy, ClusterAIPolicy, EvidenceGate, AIBudget: Healthy once the operator read the current
-- generation (condition Ready=True), Degraded when it could not (Ready=False,
-- the message says why), Progressing until then.
local hs = { status = "Progressing", message = "Waiting for the PolicyBind operator" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.status == "False" then
        hs.status = "Degraded"
      end
      hs.message = condition.message or condition.reason or ""
      return hs
    end
  end
end
return hs
