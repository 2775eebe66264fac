-- Argo CD health of an IcechunkStore: Healthy when Ready, Degraded when the operator looked at
-- this generation and could not open the repository, Progressing until it has looked.
local hs = {}
local generation = obj.metadata.generation
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      local current = condition.observedGeneration == nil or condition.observedGeneration == generation
      if condition.status == "True" and current then
        hs.status = "Healthy"
        hs.message = condition.message
        return hs
      end
      if condition.status == "False" and current then
        hs.status = "Degraded"
        hs.message = condition.message
        return hs
      end
    end
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the operator to open the repository"
return hs
